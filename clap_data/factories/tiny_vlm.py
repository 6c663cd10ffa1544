"""A tiny, randomly initialised Qwen2.5-VL with its processor, saved as a ``transformers`` model folder.

Tests, ``make demo`` and CPU benchmarks of CLAP-NTP need a vision-language model with a chat template, and
nothing may be downloaded: this builds one from a config (two text layers of width 64, a two-block vision tower
of width 32) and a processor whose tokenizer is a byte-level BPE trained with ``tokenizers`` on a small
corpus in milliseconds, with special tokens and a chat template of Qwen2.5-VL's form. Everything is seeded, so
every run writes the same files. The image processor resizes any image to at most 56 × 56 pixels (4 visual
tokens per image after the 2 × 2 merge), which keeps the vision tower cheap. It learns, but it knows nothing:
whoever shows its output must say so. ``size="small"`` (benchmarks) is the same family at about 32 M parameters
(text width 512 × 8 layers, vision 256 × 4 blocks) and 112 × 112 images (16 visual tokens each).

    python -m clap_data.factories.tiny_vlm DEST [--size small]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")

# Qwen2.5-VL's template, shortened: a default system turn, images as <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# What the BPE learns its merges from: the words of CLAP-NTP prompts and of the factory shards' language.
CORPUS = (
    "You are a helpful assistant.",
    "Robot category: S1-stationary agibot-go1 droid human franka widowx google_robot",
    "Control the robot to do the task: pick up the red cup and place it on the plate",
    "Please output the subtask and the action tokens.",
    "Subtask: reach the cup, grasp the cup, lift it, move left, move right, open the drawer, fold the towel",
    "Action: wave the arm, push the block, stack the boxes, pour water into the bowl",
    "0 1 2 3 4 5 6 7 8 9 10 the a an and to of in on with up down left right forward back",
)
_VISION = {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112}
_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
# size → text config, vision config, image pixels (the image processor's bound: 56 × 56 → 2 × 2 merged patches)
SIZES = {
    "tiny": ({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 2048,
              "rope_parameters": {**_ROPE, "mrope_section": [2, 3, 3]}},
             {**_VISION, "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
              "fullatt_block_indexes": [1]},
             56 * 56),
    "small": ({"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8, "num_attention_heads": 8,
               "num_key_value_heads": 4, "max_position_embeddings": 4096,
               "rope_parameters": {**_ROPE, "mrope_section": [8, 12, 12]}},
              {**_VISION, "depth": 4, "hidden_size": 256, "intermediate_size": 1024, "num_heads": 4,
               "out_hidden_size": 512, "fullatt_block_indexes": [1, 3]},
              112 * 112),
}


def train_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE learned from :data:`CORPUS` (every byte stays encodable), Qwen's special tokens added."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False)


def build_processor(size: str = "tiny") -> Qwen2_5_VLProcessor:
    pixels = SIZES[size][2]
    image_bounds = {"min_pixels": pixels, "max_pixels": pixels}
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**image_bounds), tokenizer=train_tokenizer(),
                               video_processor=Qwen2VLVideoProcessor(**image_bounds), chat_template=CHAT_TEMPLATE)


def build_model(processor: Qwen2_5_VLProcessor, seed: int = 0,
                size: str = "tiny") -> Qwen2_5_VLForConditionalGeneration:
    """The model for ``processor``'s tokenizer (its special tokens' ids in the config)."""
    tokenizer = processor.tokenizer
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    special = {"bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"), "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    text, vision, _ = SIZES[size]
    config = Qwen2_5_VLConfig(text_config={**text, "vocab_size": len(tokenizer), **special}, vision_config=vision,
                              **ids)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def write_tiny_vlm(dest: Path, seed: int = 0, size: str = "tiny") -> Path:
    """Write the model of ``size`` and its processor (``save_pretrained``) to ``dest``; returns ``dest``."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    processor = build_processor(size)
    build_model(processor, seed, size).save_pretrained(dest)
    processor.save_pretrained(dest)
    return Path(dest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args(argv)
    print(write_tiny_vlm(args.dest, args.seed, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())

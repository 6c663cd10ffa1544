"""CLAP-NTP's prompt and answer (METHOD.md §5), encoded through the model's own chat template, and parsed back.

Why a module of its own: training, evaluation and acting must see byte-identical prompts, and the answer the
model learns must be exactly the one the policy parses — so both directions live here, once.

* user: the images (head → right wrist → left wrist, those the sample has), then
  ``Robot category: {embodiment}\\nControl the robot to do the task: {instruction}\\nPlease output the subtask
  and the action tokens.``
* assistant: ``Subtask: {subtask}\\nAction: {2·Nq action tokens}`` (``<ACT_i>``, right arm first).

The assistant span is found without knowing the template: the conversation is rendered twice by the processor's
chat template, without the answer (with the generation prompt: exactly what the policy feeds at inference) and
with it; the first must be a prefix of the second, and the rest is the assistant's turn. The prompt goes through
the processor (which expands each image into its visual tokens); the assistant's turn is tokenized on its own and
appended, so the labelled tokens are exactly the answer's and the prompt tokens exactly the inference prompt's.
Labels cover the answer and the end-of-turn token (the model must learn to stop), nothing before or after.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clap_data.errors import ClapDataError
from clap_data.models import parse_text_tokens, text_tokens
from clap_data.schemas.shards_v1 import CAMERAS_IN_PROMPT_ORDER, EMBODIMENT, INSTRUCTION, SUBTASK, TOKENS

USER_PROMPT = ("Robot category: {embodiment}\nControl the robot to do the task: {instruction}\n"
               "Please output the subtask and the action tokens.")
ANSWER = "Subtask: {subtask}\nAction: {tokens}"
WRIST_CAMERAS = ("wrist_right", "wrist_left")
IGNORE_INDEX = -100  # the label of a token the loss skips (transformers' convention)
_ANSWER_RE = re.compile(r"Subtask: (?P<subtask>[^\n]*)\nAction:(?P<tokens>.*)", re.DOTALL)


def prompt_images(images: Mapping[str, np.ndarray], drop_wrists: bool = False) -> list[np.ndarray]:
    """The sample's images in prompt order; ``drop_wrists`` leaves out both wrist cameras together."""
    return [images[c] for c in CAMERAS_IN_PROMPT_ORDER if c in images and not (drop_wrists and c in WRIST_CAMERAS)]


def conversation(num_images: int, embodiment: str, instruction: str, answer: str | None = None) -> list[dict]:
    text = USER_PROMPT.format(embodiment=embodiment, instruction=instruction)
    messages = [{"role": "user", "content": [*({"type": "image"} for _ in range(num_images)),
                                             {"type": "text", "text": text}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def answer_text(subtask: str, tokens: Sequence[int], num_queries: int) -> str:
    """The assistant's answer for storage-order ``tokens``."""
    return ANSWER.format(subtask=subtask, tokens=text_tokens(np.asarray(tokens), num_queries))


def parse_answer(text: str, num_queries: int, codebook_size: int) -> tuple[str, torch.Tensor]:
    """A generated answer → (subtask, int16 storage-order tokens); anything else raises :class:`ClapDataError`
    (never a partial chunk: too few or too many tokens, text between them, an index outside the codebook)."""
    match = _ANSWER_RE.fullmatch(text.strip())
    if match is None:
        raise ClapDataError(f"the policy's answer is not 'Subtask: …' then 'Action: <ACT_i>…': {text[:160]!r}")
    try:
        tokens = parse_text_tokens(match["tokens"], num_queries, codebook_size)
    except ValueError as exc:
        raise ClapDataError(f"the policy's answer has no valid action tokens ({exc})") from None
    return match["subtask"], tokens


@dataclass(frozen=True)
class Prompt:
    """What the user turn is made of."""

    images: list[np.ndarray]  # in prompt order (:func:`prompt_images`)
    embodiment: str
    instruction: str


def _assistant_turn(processor: Any, prompt: Prompt, rendered: str, answer: str) -> tuple[list[int], list[int]]:
    """The assistant's turn as the chat template writes it after ``rendered``: token ids and labels."""
    full = processor.apply_chat_template(
        conversation(len(prompt.images), prompt.embodiment, prompt.instruction, answer), tokenize=False)
    if not full.startswith(rendered):
        raise ClapDataError("the model's chat template does not render the generation prompt as the start of the "
                            "conversation, so the assistant's part cannot be found")
    tokenizer = processor.tokenizer
    ids = list(tokenizer(full[len(rendered):], add_special_tokens=False)["input_ids"])
    ends = [i for i, token in enumerate(ids) if token == tokenizer.eos_token_id]
    stop = ends[-1] + 1 if ends else len(ids)  # what the template writes after the end-of-turn is never generated
    return ids, ids[:stop] + [IGNORE_INDEX] * (len(ids) - stop)


def encode(processor: Any, prompts: Sequence[Prompt], answers: Sequence[str] | None = None,
           padding_side: str = "right") -> dict[str, torch.Tensor]:
    """A batch of model inputs: the generation prompts alone (``answers`` None; left padding for ``generate``),
    or with the answers appended and ``labels``. One processor call for the whole batch (its overhead is per
    call); per-token inputs padded (input ids with the pad token, labels with :data:`IGNORE_INDEX`, the rest with
    0), the images' tensors (pixels, grids) as the processor made them, in prompt order."""
    rendered = [processor.apply_chat_template(conversation(len(p.images), p.embodiment, p.instruction), tokenize=False,
                                              add_generation_prompt=True) for p in prompts]
    images = [image for p in prompts for image in p.images]
    features = processor(text=rendered, images=images or None)
    lengths = [len(ids) for ids in features["input_ids"]]
    per_token = {key: [list(row) for row in value] for key, value in features.items()
                 if isinstance(value, list) and [len(row) for row in value] == lengths}
    if answers is not None:
        per_token["labels"] = [[IGNORE_INDEX] * n for n in lengths]
        for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
            ids, labels = _assistant_turn(processor, prompt, rendered[i], answer)
            appended = {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}
            for key, row in per_token.items():
                row[i] += appended.get(key, [0] * len(ids))
    width = max(len(row) for row in per_token["input_ids"])
    batch = {}
    for key, rows in per_token.items():
        fill = {"input_ids": processor.tokenizer.pad_token_id, "labels": IGNORE_INDEX}.get(key, 0)
        pads = [[fill] * (width - len(row)) for row in rows]
        batch[key] = torch.tensor([row + pad if padding_side == "right" else pad + row for row, pad in zip(rows, pads)])
    batch.update({key: torch.as_tensor(value) for key, value in features.items() if key not in per_token})
    return batch


def encode_training_batch(processor: Any, samples: list[dict[str, Any]], drop_wrists: Sequence[bool],
                          num_queries: int) -> dict[str, torch.Tensor]:
    """Shard samples (``clap_data.training.ntp_data``) → a labelled batch; ``drop_wrists[i]`` per sample."""
    prompts = [Prompt(prompt_images(s["images"], drop), s[EMBODIMENT], s[INSTRUCTION])
               for s, drop in zip(samples, drop_wrists, strict=True)]
    return encode(processor, prompts, [answer_text(s[SUBTASK], s[TOKENS], num_queries) for s in samples])

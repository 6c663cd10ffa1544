"""The CLAP-NTP model: any ``transformers`` vision-language model with a chat template, plus the action vocabulary.

Why a module of its own: the trainer, the policy and the benchmark load the same thing — a VLM (Qwen2.5-VL,
Qwen3-VL, … through ``AutoModelForImageTextToText``/``AutoProcessor``, from a local folder or a hub id) whose
tokenizer has the ``K`` tokens ``<ACT_0> … <ACT_{K−1}>`` of the Act-VAE's codebook (METHOD.md §5, paper IV-C1).

New embedding rows start at ``mean + 0.02·std·N(0, 1)`` of the rows the vocabulary had before (per feature), in
the input embeddings and, when they are not tied to them, in the LM head: close to the average token, so the first
steps do not see outliers, yet distinct. The rows come from a seeded generator, so every DDP rank (and a resumed
run, before its state is restored) builds the same model. A model that already has the tokens (a trained CLAP-NTP
checkpoint) is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from clap_data.errors import ClapDataError

ACTION_TOKEN = "<ACT_{}>"
NEW_ROW_SCALE = 0.02  # METHOD.md §5


@dataclass(frozen=True)
class ActionVocabulary:
    """The ids of ``<ACT_0> … <ACT_{K−1}>``: contiguous, ``first_id + i`` is code i."""

    first_id: int
    size: int

    def contains(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.first_id) & (ids < self.first_id + self.size)

    def hits(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Correct next-token predictions (argmax) at the action-token positions of ``labels``, and how many
        positions there are (logits at i predict token i + 1)."""
        targets = labels[:, 1:]
        slots = self.contains(targets)
        return ((logits[:, :-1].argmax(-1) == targets) & slots).sum(), slots.sum()


def load_vlm(source: str, **kwargs: Any) -> tuple[Any, Any]:
    """The model (``AutoModelForImageTextToText``) and its processor from a folder or hub id, as one sentence
    when that fails; ``kwargs`` go to the model's ``from_pretrained``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging

    logging.disable_progress_bar()  # its loading and saving bars: our progress lines replace them
    try:
        processor = AutoProcessor.from_pretrained(source)
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        reason = " ".join(str(exc).split())
        raise ClapDataError(f"{source} cannot be loaded as a transformers vision-language model: {reason[:300]}") \
            from None
    if getattr(processor, "tokenizer", None) is None or not getattr(processor, "chat_template", None):
        raise ClapDataError(f"{source} has no processor with a tokenizer and a chat template; CLAP-NTP needs both")
    return model, processor


def _init_rows(weight: torch.Tensor, old_rows: int, new_ids: list[int], generator: torch.Generator) -> None:
    with torch.no_grad():
        existing = weight[:old_rows].float()
        noise = torch.randn(len(new_ids), weight.shape[1], generator=generator)
        weight[new_ids] = (existing.mean(0) + NEW_ROW_SCALE * existing.std(0) * noise).to(weight.dtype)


def add_action_tokens(model: Any, processor: Any, codebook_size: int, seed: int = 0) -> ActionVocabulary:
    """Make ``<ACT_0> … <ACT_{K−1}>`` tokens of the tokenizer and rows of the model (see the module docstring)."""
    tokenizer = processor.tokenizer
    names = [ACTION_TOKEN.format(i) for i in range(codebook_size)]
    vocab = tokenizer.get_vocab()
    present = [name for name in names if name in vocab]
    if present and len(present) != len(names):
        raise ClapDataError(f"the tokenizer has {len(present)} of the {codebook_size} action tokens; a model trained "
                            "with another Act-VAE codebook cannot be continued with this one")
    if ACTION_TOKEN.format(codebook_size) in vocab:
        raise ClapDataError(f"the tokenizer has more action tokens than the Act-VAE's {codebook_size} codes")
    old_rows = len(tokenizer)
    if not present:
        tokenizer.add_tokens(names)
    ids = tokenizer.convert_tokens_to_ids(names)
    if ids != list(range(ids[0], ids[0] + codebook_size)):
        raise ClapDataError("the action tokens did not get contiguous ids in this tokenizer")
    if not present:
        embeddings = model.get_input_embeddings()
        if embeddings.weight.shape[0] < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        generator = torch.Generator().manual_seed(seed)
        _init_rows(model.get_input_embeddings().weight, old_rows, ids, generator)
        head = model.get_output_embeddings()
        if head is not None and head.weight is not model.get_input_embeddings().weight:
            _init_rows(head.weight, old_rows, ids, generator)
    return ActionVocabulary(ids[0], codebook_size)

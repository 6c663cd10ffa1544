"""Teacher-forced CLAP-NTP scores of a backbone: how much of what NTP learned a fine-tuned model still knows.

Why teacher-forced: forgetting (paper Tables VI–VII) is about the token distribution the backbone keeps, not about
one greedy answer — so every held-out sample's ground-truth answer (``Subtask: …\\nAction: <ACT_i>…``, the prompt
exactly as in training, no wrist dropping) is fed once and scored at each answer position: the cross-entropy of
the true next token (nats, averaged over the answer's tokens, the end of the turn included — what the NTP loss
is) and the share of action tokens the model's argmax gets right. Robot and human (pseudo-labelled) samples are
scored apart too: NTP learned both, while RF post-training sees robots only, so a backbone that forgets shows it
on the human samples first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from clap_data.actions import HUMAN
from clap_data.schemas.shards_v1 import EMBODIMENT
from clap_data.training.ntp_data import ShardSet, iter_samples
from clap_data.training.ntp_model import ActionVocabulary
from clap_data.training.prompts import IGNORE_INDEX, encode_training_batch


@dataclass
class _Totals:
    samples: int = 0
    answer_tokens: int = 0
    nats: float = 0.0
    action_tokens: int = 0
    action_hits: int = 0

    def add(self, samples: int, answer_tokens: int, nats: float, action_tokens: int, action_hits: int) -> None:
        self.samples += samples
        self.answer_tokens += answer_tokens
        self.nats += nats
        self.action_tokens += action_tokens
        self.action_hits += action_hits

    def scores(self) -> dict[str, Any]:
        return {"samples": self.samples, "cross_entropy": self.nats / self.answer_tokens if self.answer_tokens else None,
                "action_token_accuracy": self.action_hits / self.action_tokens if self.action_tokens else None}


@dataclass
class AnswerScores:
    """Cross-entropy (nats per answer token) and action-token accuracy, overall and for ``robot``/``human``."""

    samples: int
    cross_entropy: float | None
    action_token_accuracy: float | None
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _per_sample(logits: torch.Tensor, labels: torch.Tensor, vocab: ActionVocabulary) -> list[tuple[int, ...]]:
    """Per row: answer tokens, summed nats, action tokens, correct action tokens."""
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    keep = targets != IGNORE_INDEX
    nats = F.cross_entropy(logits.transpose(1, 2), targets.clamp_min(0), reduction="none") * keep
    slots = vocab.contains(targets)
    hits = (logits.argmax(-1) == targets) & slots
    return list(zip(keep.sum(1).tolist(), nats.sum(1).tolist(), slots.sum(1).tolist(), hits.sum(1).tolist(),
                    strict=True))


@torch.no_grad()
def answer_scores(model: Any, processor: Any, vocab: ActionVocabulary, shards: ShardSet, split: str,
                  num_queries: int, batch_size: int = 8) -> AnswerScores:
    """Score ``model`` (a VLM with the action tokens, e.g. an NTP or RF checkpoint's backbone) on every sample of
    ``split``; bf16 autocast on CUDA as in training."""
    model.eval()
    device = next(model.parameters()).device
    totals = {name: _Totals() for name in ("all", "robot", "human")}
    for batch in iter_samples(shards, split, batch_size):
        inputs = encode_training_batch(processor, batch, [False] * len(batch), num_queries)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        labels = inputs.pop("labels")
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(**inputs).logits
        for sample, row in zip(batch, _per_sample(logits, labels, vocab), strict=True):
            group = "human" if sample[EMBODIMENT] == HUMAN else "robot"
            for name in ("all", group):
                totals[name].add(1, *row)
    overall = totals["all"].scores()
    return AnswerScores(overall["samples"], overall["cross_entropy"], overall["action_token_accuracy"],
                        {name: totals[name].scores() for name in ("robot", "human") if totals[name].samples})

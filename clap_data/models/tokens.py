"""The two orders of a dual-arm chunk's action tokens, and the ``<ACT_i>`` text form (METHOD.md §3).

Why a module of its own: every tokenizer of the pipeline (the Act-VAE, the VD-VAE's targets) and the
policies share one convention, so it must not live inside one model.

* **Storage** order (the ``action_tokens`` column, ``ActVAE.tokenize_dual``): the left arm's ``Nq`` codes,
  then the right arm's.
* **Text** order (what the policy reads): ``<ACT_i>`` with the right arm's codes first, then the left's.

Both orders are exported as constants, which the token metadata records.
"""

from __future__ import annotations

import re
from typing import Any

import torch

TOKEN_ORDER_STORAGE = "left_then_right"  # tokenize_dual / detokenize_dual / parse_text_tokens
TOKEN_ORDER_TEXT = "right_then_left"  # text_tokens, the policy's "<ACT_i>" text
_TOKEN_RE = re.compile(r"<ACT_(\d+)>")


def text_tokens(tokens: Any, num_queries: int = 8) -> str:
    """Storage-order tokens ``[2·Nq]`` (left's, then right's) -> ``"<ACT_i>..."`` with the **right arm's
    codes first, then the left's** (METHOD.md §3)."""
    flat = torch.as_tensor(tokens).reshape(-1).tolist()
    if len(flat) != 2 * num_queries:
        raise ValueError(f"expected {2 * num_queries} tokens, got {len(flat)}")
    if any(int(t) < 0 for t in flat):
        raise ValueError(f"token indices must be non-negative, got {flat}")
    left, right = flat[:num_queries], flat[num_queries:]
    return "".join(f"<ACT_{int(t)}>" for t in right + left)


def parse_text_tokens(text: str, num_queries: int = 8, codebook_size: int | None = None) -> torch.Tensor:
    """Inverse of :func:`text_tokens`: ``"<ACT_i>"×2·Nq`` (right's first) -> int16 ``[2·Nq]`` in storage
    order (left's, then right's). Whitespace between tokens is allowed; anything else raises ``ValueError``."""
    if not isinstance(text, str):
        raise ValueError(f"expected a str of <ACT_i> tokens, got {type(text).__name__}")
    compact = re.sub(r"\s+", "", text)
    values: list[int] = []
    pos = 0
    for match in _TOKEN_RE.finditer(compact):
        if match.start() != pos:
            raise ValueError(f"malformed action text at character {pos}: {compact[pos:match.start()][:40]!r}")
        values.append(int(match.group(1)))
        pos = match.end()
    if pos != len(compact):
        raise ValueError(f"malformed action text at character {pos}: {compact[pos:][:40]!r}")
    if len(values) != 2 * num_queries:
        raise ValueError(f"expected {2 * num_queries} <ACT_i> tokens, got {len(values)} in {text[:80]!r}")
    limit = codebook_size if codebook_size is not None else torch.iinfo(torch.int16).max + 1
    bad = sorted({v for v in values if v >= limit})
    if bad:
        codebook = f": the checkpoint's codebook has K = {limit} codes" if codebook_size is not None else ""
        raise ValueError(f"action token indices {bad} are outside [0, {limit}){codebook}")
    right, left = values[:num_queries], values[num_queries:]
    return torch.tensor(left + right, dtype=torch.int16)

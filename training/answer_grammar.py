"""Greedy decoding held to the answer's grammar: once ``Action:`` is written, exactly 2·Nq action tokens, then stop.

Why: a robot needs a chunk from every call, and an under-trained (or merely unlucky) model writes 15 or 17
``<ACT_i>`` tokens, or text between them, far more often than a wrong subtask. The answer's grammar
(:mod:`clap_data.training.prompts`: ``Subtask: {text}\\nAction: {2·Nq action tokens}``) is known, so generation is
constrained to it — the way action-token VLAs restrict their action vocabulary at decoding — instead of parsing a
broken answer after the fact. Per row of the batch, from the tokens generated so far:

* before the answer has reached ``\\nAction:``, action tokens are forbidden (the subtask is free text);
* right after ``\\nAction:`` nothing is forbidden (the model writes the whitespace it learned, or an action
  token); after ``\\nAction:`` and whitespace, only action tokens;
* after the first action token, only action tokens, until 2·Nq are written; then only the end-of-turn token.

Every choice is still the model's own greedy one among the allowed tokens. An answer that never reaches
``\\nAction:`` within the token budget stays malformed and is refused by :func:`~clap_data.training.prompts.
parse_answer` as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

_ACTION_PREFIX = re.compile(r"\nAction:(?P<space>\s*)$")


class AnswerGrammar(LogitsProcessor):
    """A ``LogitsProcessor`` for ``generate`` (see the module docstring); ``prompt_length`` is the padded width
    of the prompt batch (left padding: every row's answer starts there)."""

    def __init__(self, tokenizer: object, first_action_id: int, codebook_size: int, num_tokens: int,
                 end_ids: Sequence[int], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.first, self.last = first_action_id, first_action_id + codebook_size
        self.num_tokens, self.end_ids, self.prompt_length = num_tokens, list(end_ids), prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        answer = input_ids[:, self.prompt_length:]
        is_action = (answer >= self.first) & (answer < self.last)
        written = is_action.sum(dim=1).tolist()
        banned = torch.zeros_like(scores, dtype=torch.bool)
        for row, count in enumerate(written):
            if count >= self.num_tokens:  # the chunk is complete: only the end of the turn
                banned[row] = True
                banned[row, self.end_ids] = False
                continue
            prefix = None if count else _ACTION_PREFIX.search(self._text(answer[row]))
            if count or (prefix and prefix["space"]):  # inside the action part: action tokens only
                banned[row] = True
                banned[row, self.first:self.last] = False
            elif prefix is None:  # the subtask: free text, no action token yet
                banned[row, self.first:self.last] = True
            # right after "Action:" nothing is banned: the whitespace the model learned, or a first action token
        return scores.masked_fill(banned, float("-inf"))

    def _text(self, ids: torch.Tensor) -> str:
        return self.tokenizer.decode(ids.tolist(), skip_special_tokens=True)

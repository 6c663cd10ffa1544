"""Greedy decoding held to the answer's grammar (``training/answer_grammar.py``): which tokens each stage of an
answer allows, and that the tiny policy's answers all parse under it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from clap_data.schemas import shards_v1 as S
from clap_data.training import NTPPolicy
from clap_data.training.answer_grammar import AnswerGrammar
from clap_data.training.ntp_checkpoint import read_policy_meta
from clap_data.training.ntp_data import ShardSet, iter_samples
from clap_data.training.prompts import Prompt, parse_answer, prompt_images

PROMPT = [101, 102, 103]  # any ids: the grammar reads only what follows the prompt's width


@pytest.fixture(scope="module")
def grammar(trained):
    settings, _ = trained
    meta = read_policy_meta(settings.out)
    tokenizer = AutoProcessor.from_pretrained(settings.out).tokenizer
    nq, k = int(meta["num_queries"]), int(meta["codebook_size"])
    first = int(meta["action_token_first_id"])
    return AnswerGrammar(tokenizer, first, k, 2 * nq, [tokenizer.eos_token_id], len(PROMPT)), tokenizer, first, k, nq


def _allowed(grammar: AnswerGrammar, tokenizer, answer_ids: list[int]) -> set[int]:
    vocab = len(tokenizer)
    scores = grammar(torch.tensor([PROMPT + answer_ids]), torch.zeros(1, vocab))
    return set(torch.nonzero(torch.isfinite(scores[0])).flatten().tolist())


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_each_stage_of_the_answer_allows_what_the_grammar_says(grammar):
    g, tokenizer, first, k, nq = grammar
    everything, actions = set(range(len(tokenizer))), set(range(first, first + k))
    assert _allowed(g, tokenizer, _ids(tokenizer, "Subtask: lift the cup")) == everything - actions
    assert _allowed(g, tokenizer, _ids(tokenizer, "Subtask: lift the cup\nAction:")) == everything
    assert _allowed(g, tokenizer, _ids(tokenizer, "Subtask: lift the cup\nAction: ")) == actions
    some = _ids(tokenizer, "Subtask: lift\nAction: ") + [first + 3, first + 1]
    assert _allowed(g, tokenizer, some) == actions
    full = _ids(tokenizer, "Subtask: lift\nAction: ") + [first + 2] * (2 * nq)
    assert _allowed(g, tokenizer, full) == {tokenizer.eos_token_id}
    # a batch: each row by its own state
    rows = torch.tensor([PROMPT + [first] * (2 * nq), PROMPT + [first] + [tokenizer.pad_token_id] * (2 * nq - 1)])
    scores = g(rows, torch.zeros(2, len(tokenizer)))
    assert set(torch.nonzero(torch.isfinite(scores[0])).flatten().tolist()) == {tokenizer.eos_token_id}
    assert set(torch.nonzero(torch.isfinite(scores[1])).flatten().tolist()) == actions


def test_every_answer_of_the_tiny_policy_parses_under_the_grammar(trained, shards):
    settings, _ = trained
    policy = NTPPolicy.from_pretrained(settings.out, device="cpu")
    batch = next(iter_samples(ShardSet.open(shards), S.HELDOUT_SPLIT, 24))
    answers = policy.generate([Prompt(prompt_images(s["images"]), s[S.EMBODIMENT], s[S.INSTRUCTION]) for s in batch])
    parsed = [parse_answer(answer, policy.num_queries, policy.codebook_size) for answer in answers]
    assert len(parsed) == 24 and all(tokens.shape == (2 * policy.num_queries,) for _, tokens in parsed)
    assert all(np.all((tokens.numpy() >= 0) & (tokens.numpy() < policy.codebook_size)) for _, tokens in parsed)

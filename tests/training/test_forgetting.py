"""Teacher-forced NTP scores (``training/forgetting.py``) against the model's own loss and a by-hand count."""

from __future__ import annotations

import pytest
import torch

from clap_data.schemas import shards_v1 as S
from clap_data.training.forgetting import answer_scores
from clap_data.training.ntp_checkpoint import read_policy_meta
from clap_data.training.ntp_data import ShardSet, iter_samples
from clap_data.training.ntp_model import ActionVocabulary, load_vlm
from clap_data.training.prompts import encode_training_batch


@pytest.fixture(scope="module")
def policy_model(trained):
    settings, _ = trained
    meta = read_policy_meta(settings.out)
    model, processor = load_vlm(settings.out)
    return model.eval(), processor, ActionVocabulary(int(meta["action_token_first_id"]), int(meta["codebook_size"])), \
        int(meta["num_queries"])


def test_scores_equal_the_models_own_loss_and_a_count_by_hand(policy_model, shards):
    model, processor, vocab, nq = policy_model
    shard_set = ShardSet.open(shards)
    scores = answer_scores(model, processor, vocab, shard_set, S.HELDOUT_SPLIT, nq, batch_size=5)
    samples = [s for batch in iter_samples(shard_set, S.HELDOUT_SPLIT, 64) for s in batch]
    inputs = encode_training_batch(processor, samples, [False] * len(samples), nq)
    with torch.no_grad():
        out = model(**inputs)  # transformers' loss: the mean over every labelled token of the batch
    hits, slots = vocab.hits(out.logits, inputs["labels"])
    assert scores.samples == len(samples) == 24
    assert scores.cross_entropy == pytest.approx(out.loss.item(), rel=1e-4)
    assert scores.action_token_accuracy == pytest.approx(hits.item() / slots.item())
    humans = [s for s in samples if s[S.EMBODIMENT] == "human"]
    assert scores.groups["human"]["samples"] == len(humans) and scores.groups["robot"]["samples"] == 24 - len(humans)
    human_inputs = encode_training_batch(processor, humans, [False] * len(humans), nq)
    with torch.no_grad():
        human_loss = model(**human_inputs).loss.item()
    assert scores.groups["human"]["cross_entropy"] == pytest.approx(human_loss, rel=1e-4)


def test_a_changed_backbone_scores_differently(policy_model, shards):
    model, processor, vocab, nq = policy_model
    shard_set = ShardSet.open(shards)
    before = answer_scores(model, processor, vocab, shard_set, S.HELDOUT_SPLIT, nq, batch_size=8)
    changed = load_vlm(str(model.name_or_path))[0].eval()
    with torch.no_grad():
        for parameter in changed.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    after = answer_scores(changed, processor, vocab, shard_set, S.HELDOUT_SPLIT, nq, batch_size=8)
    assert after.cross_entropy > before.cross_entropy

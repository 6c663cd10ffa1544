"""CLAP-NTP's model and prompts: the tiny VLM factory, the action tokens and their rows, the prompt, the labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clap_data.errors import ClapDataError
from clap_data.factories.tiny_vlm import write_tiny_vlm
from clap_data.training.ntp_model import NEW_ROW_SCALE, add_action_tokens, load_vlm
from clap_data.training.prompts import (
    IGNORE_INDEX,
    Prompt,
    answer_text,
    encode,
    parse_answer,
    prompt_images,
)
from clap_data.training.train_common import wrist_drops


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return write_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny")


def _image(level: int, size: tuple[int, int] = (56, 56)) -> np.ndarray:
    return np.full((*size, 3), level, dtype=np.uint8)


def test_the_tiny_vlm_is_seeded_and_loads_like_any_transformers_vlm(vlm, tmp_path):
    again = write_tiny_vlm(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (vlm / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == (vlm / "tokenizer.json").read_bytes()
    model, processor = load_vlm(str(vlm))
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert processor.tokenizer.eos_token == "<|im_end|>" and processor.chat_template
    # any image size becomes at most 56 × 56 pixels: 4 visual tokens after the 2 × 2 merge
    features = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[_image(0, (240, 320))])
    assert features["input_ids"][0].count(processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")) <= 4


def test_a_folder_that_is_no_vlm_is_refused_in_one_sentence(tmp_path):
    with pytest.raises(ClapDataError, match="cannot be loaded as a transformers vision-language model"):
        load_vlm(str(tmp_path))


def test_action_tokens_get_contiguous_ids_and_rows_of_mean_plus_small_noise(vlm):
    model, processor = load_vlm(str(vlm))
    old = len(processor.tokenizer)
    before = {name: layer.weight.detach().clone() for name, layer in
              (("input", model.get_input_embeddings()), ("head", model.get_output_embeddings()))}
    vocab = add_action_tokens(model, processor, 512, seed=3)
    assert (vocab.first_id, vocab.size) == (old, 512)
    assert processor.tokenizer.convert_tokens_to_ids(["<ACT_0>", "<ACT_511>"]) == [old, old + 511]
    generator = torch.Generator().manual_seed(3)
    for name, layer in (("input", model.get_input_embeddings()), ("head", model.get_output_embeddings())):
        weight = layer.weight.detach()
        assert weight.shape[0] == old + 512
        assert torch.equal(weight[:old], before[name])  # the old rows are untouched
        mean, std = before[name].mean(0), before[name].std(0)
        expected = mean + NEW_ROW_SCALE * std * torch.randn(512, weight.shape[1], generator=generator)
        assert torch.allclose(weight[old:], expected, atol=1e-6)
        standardized = (weight[old:] - mean) / std
        assert abs(float(standardized.mean())) < 0.005 and abs(float(standardized.std()) - NEW_ROW_SCALE) < 0.002
    # a model that has the tokens is left as it is; another codebook size is refused
    assert add_action_tokens(model, processor, 512, seed=9) == vocab
    with pytest.raises(ClapDataError, match="more action tokens"):
        add_action_tokens(model, processor, 256)


def test_tied_embeddings_get_their_rows_once(vlm):
    model, processor = load_vlm(str(vlm), tie_word_embeddings=True)
    old = len(processor.tokenizer)
    add_action_tokens(model, processor, 16)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.get_input_embeddings().weight.shape[0] == old + 16


def test_images_come_head_then_right_then_left_and_wrists_drop_together():
    head, right, left = _image(1), _image(2), _image(3)
    images = {"wrist_left": left, "head": head, "wrist_right": right}
    assert [int(i[0, 0, 0]) for i in prompt_images(images)] == [1, 2, 3]
    assert [int(i[0, 0, 0]) for i in prompt_images(images, drop_wrists=True)] == [1]
    assert [int(i[0, 0, 0]) for i in prompt_images({"wrist_left": left}, drop_wrists=False)] == [3]


def test_the_prompt_is_the_papers_and_only_the_answer_is_labelled(vlm):
    model, processor = load_vlm(str(vlm))
    add_action_tokens(model, processor, 16)
    tokens = [1, 2, 3, 4, 11, 12, 13, 14]  # storage order: left arm's 4, then right's 4
    answer = answer_text("grasp the cup", tokens, 4)
    assert answer == "Subtask: grasp the cup\nAction: <ACT_11><ACT_12><ACT_13><ACT_14><ACT_1><ACT_2><ACT_3><ACT_4>"
    prompts = [Prompt([_image(1), _image(2), _image(3)], "S1-stationary", "pick up the red cup"),
               Prompt([_image(1)], "droid", "open the drawer")]
    answers = [answer, answer_text("", tokens, 4)]
    batch = encode(processor, prompts, answers)
    tokenizer = processor.tokenizer
    first = tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    vision = "<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>"
    assert first.endswith(
        f"<|im_start|>user\n{vision * 3}Robot category: S1-stationary\nControl the robot to do the task: pick up the "
        "red cup\nPlease output the subtask and the action tokens.<|im_end|>\n<|im_start|>assistant\n"
        f"{answer}<|im_end|>\n")
    for ids, labels, expected in zip(batch["input_ids"], batch["labels"], answers, strict=True):
        labelled = labels != IGNORE_INDEX
        assert tokenizer.decode(ids[labelled]) == expected + "<|im_end|>"
        assert torch.equal(labels[labelled], ids[labelled])
        span = labelled.nonzero().flatten()  # one block: the end of the prompt, nothing before
        assert torch.equal(span, torch.arange(int(span[0]), int(span[-1]) + 1))
    # right padding: padded positions are masked in attention and labels; pixels of 4 images, in order
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]
    assert (batch["labels"][1][~batch["attention_mask"][1].bool()] == IGNORE_INDEX).all()
    assert batch["image_grid_thw"].shape[0] == 4
    generation = encode(processor, prompts, padding_side="left")
    assert "labels" not in generation and generation["attention_mask"][1][0] == 0


def test_answers_parse_strictly():
    subtask, tokens = parse_answer("Subtask: lift it\nAction: <ACT_5><ACT_6> <ACT_7><ACT_8>", 2, 16)
    assert subtask == "lift it" and tokens.tolist() == [7, 8, 5, 6] and tokens.dtype == torch.int16
    for bad, reason in [
        ("Subtask: lift it\nAction: <ACT_5><ACT_6><ACT_7>", "expected 4"),
        ("Subtask: lift it\nAction: <ACT_5><ACT_6>up<ACT_7><ACT_8>", "malformed action text"),
        ("Subtask: lift it\nAction: <ACT_5><ACT_6><ACT_7><ACT_99>", "outside"),
        ("Action: <ACT_5><ACT_6><ACT_7><ACT_8>", "not 'Subtask: …'"),
        ("", "not 'Subtask: …'"),
    ]:
        with pytest.raises(ClapDataError, match=reason):
            parse_answer(bad, 2, 16)


def test_wrist_drops_are_seeded_about_half_and_never_leave_a_sample_without_images():
    samples = [{"images": {"head": 0, "wrist_right": 0}}] * 400 + [{"images": {"wrist_left": 0}}] * 50
    drops = wrist_drops(samples, 0.5, seed=1, step=7, rank=0)
    assert drops == wrist_drops(samples, 0.5, seed=1, step=7, rank=0)
    assert drops != wrist_drops(samples, 0.5, seed=1, step=8, rank=0)
    assert 0.4 < sum(drops[:400]) / 400 < 0.6 and not any(drops[400:])

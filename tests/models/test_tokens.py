"""The token text form: right arm's codes first, back to storage order (left's first), strict parsing."""

import pytest
import torch

from clap_data.models.tokens import parse_text_tokens, text_tokens


def test_text_tokens_round_trip_right_arm_first():
    tokens = torch.tensor(list(range(8)) + list(range(100, 108)), dtype=torch.int16)  # left 0..7, right 100..107
    text = text_tokens(tokens)
    assert text.startswith("<ACT_100><ACT_101>") and text.endswith("<ACT_6><ACT_7>")
    back = parse_text_tokens(text)
    assert back.dtype == torch.int16 and torch.equal(back, tokens)
    assert torch.equal(parse_text_tokens(text.replace("><", "> <")), tokens)
    for bad in [text[:-1], text + "<ACT_1>", text.replace("<ACT_3>", "<ACT_x>"), "junk" + text, text[9:]]:
        with pytest.raises(ValueError):
            parse_text_tokens(bad)
    with pytest.raises(ValueError):
        parse_text_tokens(text, codebook_size=100)

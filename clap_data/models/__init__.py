"""Neural tokenizers of the CLAP pipeline: the Act-VAE (stage 1) and its vector quantiser.

Status (work in progress, issue #4): the modules, checkpoints (safetensors + config.json, sha256
identity) and token layouts are in place and tested, but the Act-VAE does not learn yet — even with
the quantiser bypassed, the small preset stays at the data's variance (it predicts the mean), so
something in the architecture or its initialisation is wrong. There is no training or tokenizing
command until that is fixed.
"""

from clap_data.models.act_vae import (
    TOKEN_ORDER_STORAGE,
    TOKEN_ORDER_TEXT,
    ActVAE,
    ActVAEConfig,
    checkpoint_sha256,
    parse_text_tokens,
    text_tokens,
)
from clap_data.models.quantizer import VectorQuantizer, code_usage, perplexity

__all__ = [
    "TOKEN_ORDER_STORAGE",
    "TOKEN_ORDER_TEXT",
    "ActVAE",
    "ActVAEConfig",
    "VectorQuantizer",
    "checkpoint_sha256",
    "code_usage",
    "parse_text_tokens",
    "perplexity",
    "text_tokens",
]

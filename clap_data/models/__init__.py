"""Neural tokenizers of the CLAP pipeline: the Act-VAE (stage 1) and its vector quantiser.

Training, tokenizing, decoding and evaluation built on these modules live in ``clap_data.act_vae``.
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

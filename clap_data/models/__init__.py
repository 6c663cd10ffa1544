"""Neural tokenizers of the CLAP pipeline: the Act-VAE (stage 1), its vector quantiser, the VD-VAE (stage 2,
human video → pseudo action tokens), and what every model shares: the token orders and text form (``tokens``)
and the checkpoint folder (``checkpoint``).

Training, tokenizing, decoding and evaluation built on these modules live in ``clap_data.act_vae``.
"""

from clap_data.models.act_vae import ActVAE, ActVAEConfig
from clap_data.models.checkpoint import checkpoint_sha256, load_model, save_model
from clap_data.models.quantizer import VectorQuantizer, code_usage, perplexity
from clap_data.models.tokens import TOKEN_ORDER_STORAGE, TOKEN_ORDER_TEXT, parse_text_tokens, text_tokens
from clap_data.models.vd_vae import VDVAE, VDVAEConfig, augment_pairs

__all__ = [
    "TOKEN_ORDER_STORAGE",
    "TOKEN_ORDER_TEXT",
    "ActVAE",
    "ActVAEConfig",
    "VDVAE",
    "VDVAEConfig",
    "VectorQuantizer",
    "checkpoint_sha256",
    "augment_pairs",
    "code_usage",
    "load_model",
    "parse_text_tokens",
    "perplexity",
    "save_model",
    "text_tokens",
]

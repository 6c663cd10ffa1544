"""A tiny, randomly initialised DINOv2 backbone saved as a ``transformers`` model folder.

``make demo`` and smoke runs need a vision backbone, and nothing may be downloaded: this writes one
built from a config (seeded, so every run writes the same weights) that ``load_backbone`` reads like
a real DINOv2 folder. Its features mean nothing — it exercises the VD-VAE's plumbing, not its quality,
and whoever uses it must say so.

    python -m clap_data.factories.tiny_backbone DEST
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import Dinov2Config

from clap_data.models.backbone import FrozenBackbone

# /40 patches: a 6 × 8 grid at 240 × 320, 48 tokens of 32 features per frame — seconds per episode on a CPU.
TINY_CONFIG = {"patch_size": 40, "image_size": 80, "hidden_size": 32, "num_hidden_layers": 2,
               "num_attention_heads": 2, "intermediate_size": 64}


def write_tiny_backbone(dest: Path, seed: int = 0) -> Path:
    """Write the tiny backbone's folder (``config.json`` + weights) to ``dest``; returns ``dest``."""
    torch.manual_seed(seed)
    FrozenBackbone.from_config(Dinov2Config(**TINY_CONFIG)).model.save_pretrained(dest)
    return Path(dest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_tiny_backbone(args.dest, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A small training-shard folder in exactly the export's format (``schemas/shards_v1.py``), for CLAP-NTP tests.

The policy's trainer, evaluation and benchmarks need shards before ``clap-data export`` exists and without
hours of ingest: this writes ``train/`` and ``heldout/`` parquet shards with JPEG images and a ``manifest.json``
for three small datasets — a dual-arm robot (``S1-stationary``, three cameras), a single-arm one (``droid``,
right slot, no left wrist camera) and human video (``human``, head camera, pseudo-tokens). The last episode of
each dataset is held out.

What makes it learnable: every sample has a *task* (fixed per episode: the instruction and the head image's
colour) and a *phase* (the frame index modulo 4: a white band's place in the head image, the right wrist image's
gray level and the subtask). Its tokens are a function of (task, phase) — so a model that reads the
instruction and the images can predict them — and its action chunk is the Act-VAE's decoding of those tokens,
so the ground truth of ``eval ntp`` is exactly reachable. The inactive left arm of ``droid`` carries the codes of
an all-zero chunk, as ``tokenize`` writes them; no chunk is flagged padded. Everything is seeded: the same
arguments give the same bytes.

    python -m clap_data.factories.shards DEST --act-vae CKPT
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from clap_data.act_vae.checkpoint import load_act_vae
from clap_data.actions import HUMAN, mask_arms
from clap_data.factories.common import clear_generated
from clap_data.models import TOKEN_ORDER_STORAGE, TOKEN_ORDER_TEXT, text_tokens
from clap_data.reference import openclap_stats_table
from clap_data.schemas import shards_v1 as S
from clap_data.splits import unit_hash

INSTRUCTIONS = ("pick up the red cup", "open the drawer", "fold the towel")
SUBTASKS = ("reach the cup", "grasp the cup", "lift it", "move left")  # one per phase
PALETTE = ((200, 40, 40), (40, 160, 60), (50, 70, 200))  # head-image background per task
PHASES = len(SUBTASKS)
JPEG_QUALITY = 90


@dataclass(frozen=True)
class FactoryDataset:
    dataset: str
    embodiment: str
    cameras: tuple[str, ...]
    arm_mask: tuple[bool, bool]
    token_source: str


DATASETS = (
    FactoryDataset("factory:s1", "S1-stationary", S.CAMERAS_IN_PROMPT_ORDER, (True, True), "action_tokens"),
    FactoryDataset("factory:droid", "droid", ("head", "wrist_right"), (False, True), "action_tokens"),
    FactoryDataset("factory:human", HUMAN, ("head",), (True, True), "pseudo_tokens"),
)


def sample_tokens(task: int, phase: int, num_queries: int, codebook_size: int) -> np.ndarray:
    """Storage-order tokens of a (task, phase): what the policy has to learn (a fixed random table, so no
    arithmetic pattern lets a model continue a sequence past its end)."""
    return np.random.default_rng([task, phase]).integers(0, codebook_size, 2 * num_queries).astype(np.int16)


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _images(task: int, phase: int, size: tuple[int, int]) -> dict[str, bytes]:
    """Head: the task's colour with a white band in the phase's quarter; right wrist: a gray level per phase;
    left wrist: a gray level per task."""
    h, w = size
    head = np.zeros((h, w, 3), dtype=np.uint8) + np.array(PALETTE[task], dtype=np.uint8)
    head[:, phase * w // PHASES: (phase + 1) * w // PHASES] = 255
    right = np.full((h, w, 3), 30 + 60 * phase, dtype=np.uint8)
    left = np.full((h, w, 3), 60 + 60 * task, dtype=np.uint8)
    return {"head": _jpeg(head), "wrist_right": _jpeg(right), "wrist_left": _jpeg(left)}


def _statistics(embodiments: set[str]) -> dict[str, Any]:
    table = openclap_stats_table()
    return {e: {"id": f"openclap:{e}", **table[e]} for e in sorted(embodiments) if e != HUMAN}


def _rows(spec: FactoryDataset, episodes: int, frames: int, size: tuple[int, int], act_vae: Any,
          stats: dict[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
    c = act_vae.config
    idle = act_vae.tokenize_dual(torch.zeros(1, c.chunk_size, 14))[0].numpy()  # an inactive arm's codes
    mask = np.asarray(spec.arm_mask, dtype=np.float64)
    rows = []
    for episode in range(episodes):
        task = (episode + DATASETS.index(spec)) % len(INSTRUCTIONS)
        if spec.embodiment == HUMAN:
            state = np.zeros(14)
        else:
            q01, q99 = (np.asarray(stats[spec.embodiment]["state"][q]) for q in ("q01", "q99"))
            state = mask_arms(q01 + (q99 - q01) * rng.uniform(0.3, 0.7, 14), mask)
        for frame in range(frames):
            phase = frame % PHASES
            tokens = sample_tokens(task, phase, c.num_queries, c.codebook_size)
            if not spec.arm_mask[0]:
                tokens[: c.num_queries] = idle[: c.num_queries]
            if spec.embodiment == HUMAN:
                chunk = np.zeros((c.chunk_size, 14))
            else:
                chunk = mask_arms(act_vae.detokenize_dual(torch.as_tensor(tokens[None]).long())[0].double().numpy(),
                                  mask)
            images = _images(task, phase, size)
            rows.append({
                S.SAMPLE_ID: f"{spec.dataset}/{episode:06d}/{frame}", S.DATASET: spec.dataset,
                S.EPISODE_INDEX: episode, S.SOURCE_EPISODE_ID: f"{episode:06d}", S.FRAME_INDEX: frame,
                S.EMBODIMENT: spec.embodiment, S.INSTRUCTION: INSTRUCTIONS[task], S.SUBTASK: SUBTASKS[phase],
                **{S.image_column(cam): images[cam] if cam in spec.cameras else None
                   for cam in S.CAMERAS_IN_PROMPT_ORDER},
                S.TOKENS: tokens.tolist(), S.TOKENS_TEXT: text_tokens(tokens, c.num_queries),
                S.TOKEN_SOURCE: spec.token_source, S.PADDED: False,
                S.STATE: state.astype(np.float32).tolist(), S.ACTIONS: chunk.astype(np.float32).reshape(-1).tolist(),
                S.ARM_MASK: list(spec.arm_mask),
            })
    return rows


def _write_split(dest: Path, split: str, rows: list[dict[str, Any]], shards: int, seed: int,
                 schema: pa.Schema) -> list[dict[str, Any]]:
    """Samples hashed to shards, shuffled within each shard (the export's deterministic shuffle)."""
    buckets: list[list[dict[str, Any]]] = [[] for _ in range(shards)]
    for row in rows:
        buckets[int(unit_hash(f"{seed}:{row[S.SAMPLE_ID]}") * shards)].append(row)
    (dest / split).mkdir(parents=True, exist_ok=True)
    files = []
    for index, bucket in enumerate(buckets):
        order = np.random.default_rng([seed, index]).permutation(len(bucket))
        name = f"{split}/{S.SHARD_PATTERN.format(index=index)}"
        pq.write_table(pa.Table.from_pylist([bucket[i] for i in order], schema=schema), dest / name, row_group_size=16)
        files.append({"file": name, "rows": len(bucket)})
    return files


def _split_entry(rows: list[dict[str, Any]], files: list[dict[str, Any]]) -> dict[str, Any]:
    """A split's counts (per dataset and embodiment) and shard files, as the export's manifest has them."""
    per: dict[str, dict[str, int]] = {S.DATASET: {}, S.EMBODIMENT: {}}
    for row in rows:
        for key, table in per.items():
            table[row[key]] = table.get(row[key], 0) + 1
    return {"samples": len(rows), "padded": sum(row[S.PADDED] for row in rows), "datasets": per[S.DATASET],
            "embodiments": per[S.EMBODIMENT], "shards": files}


def _is_factory_shards(root: Path) -> bool:
    manifest = root / S.SHARD_MANIFEST
    return manifest.is_file() and bool(json.loads(manifest.read_text()).get("factory"))


def write_ntp_shards(
    dest: Path, act_vae_ckpt: Path, episodes: int = 4, frames: int = 8, image_size: tuple[int, int] = (56, 56),
    train_shards: int = 2, seed: int = 0, overwrite: bool = False,
) -> Path:
    """Write the shard folder (see the module docstring) for the Act-VAE at ``act_vae_ckpt``; returns ``dest``."""
    dest = Path(dest)
    clear_generated(dest, overwrite, _is_factory_shards, "factory shard folder")
    act_vae, sha = load_act_vae(act_vae_ckpt)
    stats = _statistics({spec.embodiment for spec in DATASETS})
    rng = np.random.default_rng(seed)
    rows = [row for spec in DATASETS for row in _rows(spec, episodes, frames, image_size, act_vae, stats, rng)]
    c = act_vae.config
    schema = S.shard_arrow_schema(num_tokens=2 * c.num_queries)
    splits = {}
    for split, held_out, shards in ((S.TRAIN_SPLIT, False, train_shards), (S.HELDOUT_SPLIT, True, 1)):
        mine = [row for row in rows if (row[S.EPISODE_INDEX] == episodes - 1) == held_out]
        splits[split] = _split_entry(mine, _write_split(dest, split, mine, shards, seed, schema))
    manifest = {
        "schema": S.SHARDS_SCHEMA_NAME, "schema_version": S.SHARDS_SCHEMA_VERSION, "factory": True,
        "samples": len(rows), "splits": splits,
        "act_vae": {"checkpoint_sha256": sha, "checkpoint": str(Path(act_vae_ckpt).absolute()),
                    "num_queries": c.num_queries, "codebook_size": c.codebook_size, "chunk_size": c.chunk_size,
                    "token_order_storage": TOKEN_ORDER_STORAGE, "token_order_text": TOKEN_ORDER_TEXT},
        "num_tokens": 2 * c.num_queries, "token_sources": {spec.dataset: spec.token_source for spec in DATASETS},
        "statistics": stats, "mix": {"weights": {spec.dataset: 1.0 for spec in DATASETS}, "applied_by": "loader"},
        "seed": seed, "chunk_steps": S.CHUNK_STEPS, "cameras": list(S.CAMERAS_IN_PROMPT_ORDER),
        "image": {"height": image_size[0], "width": image_size[1], "format": "jpeg", "quality": JPEG_QUALITY},
        "datasets": [{"dataset_ids": [spec.dataset], "embodiment": spec.embodiment, "cameras": list(spec.cameras),
                      "token_source": spec.token_source, "stats_id": stats.get(spec.embodiment, {}).get("id")}
                     for spec in DATASETS],
    }
    (dest / S.SHARD_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--act-vae", type=Path, required=True, help="the Act-VAE checkpoint whose codes the tokens are")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per dataset (the last one held out)")
    parser.add_argument("--frames", type=int, default=8, help="samples per episode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    print(write_ntp_shards(args.dest, args.act_vae, args.episodes, args.frames, seed=args.seed,
                           overwrite=args.overwrite))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How well an Act-VAE checkpoint reconstructs held-out chunks (METHOD.md §3, the paper's Table V).

Every one-arm chunk on the held-out side of the split goes through the quantiser exactly as the
policy's tokens will: encode → nearest code → decode, in eval mode and without gradients. The
report gives the distortion twice, because the two answer different questions:

* ``normalised_mse`` / ``psnr_db``: in the [-1, 1] space the model sees, comparable with the
  paper (``PSNR = 20·log10(R/√MSE)``, R = 2);
* ``per_dof_mse``: per degree of freedom in the robot's units (metres, radians, gripper in
  [-1, 1]) after denormalising with each dataset's own statistics, which is what a controller feels.

It also reports how the codebook is used on held-out data (usage, perplexity, dead codes). Only
running sums and a K-length code histogram are kept, so memory does not grow with the data.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from clap_data.act_vae.checkpoint import load_act_vae
from clap_data.act_vae.chunk_pool import DEFAULT_MAX_FRAMES, ChunkPool
from clap_data.act_vae.training import pick_device
from clap_data.actions import CHUNK_SIZE, NormStats, denormalize
from clap_data.errors import ClapDataError
from clap_data.models import ActVAE
from clap_data.models.quantizer import perplexity_from_counts
from clap_data.schemas import ARM_SLICES, POSE14_NAMES
from clap_data.splits import Holdout

PEAK = 2.0  # R: normalised data spans [-1, 1]
NOTHING_HELD_OUT = Holdout("tail", 0.0)  # its training side is every chunk start of every episode
EVERY_CHUNK = "no training split: scoring every chunk"
ARM_DOFS = len(POSE14_NAMES) // 2


def psnr_db(mse: float, peak: float = PEAK) -> float:
    """``20·log10(R/√MSE)``; infinite for a perfect reconstruction."""
    return math.inf if mse == 0 else 20.0 * math.log10(peak / math.sqrt(mse))


def json_number(value: float) -> float | None:
    """``value``, or None where JSON has no number for it (inf, nan)."""
    return value if math.isfinite(value) else None


@dataclass
class EvalReport:
    """What ``clap-data eval act-vae`` prints; ``to_dict`` is its JSON form."""

    ckpt: str
    sha256: str
    num_queries: int
    codebook_size: int
    chunks: int
    normalised_mse: float
    psnr_db: float
    per_dof_mse: dict[str, float | None]
    code_usage: float
    perplexity: float
    dead_codes: int
    holdout: dict[str, object] | None  # None: every chunk was scored (a checkpoint with no training split)
    stats_ids: dict[str, str]
    device: str
    notice: str = ""  # e.g. that a subset of episodes was scored (max_frames)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["psnr_db"] = json_number(self.psnr_db)
        return out


def _as_dual(arm_chunks: NDArray[np.float64], arms: NDArray[np.int64]) -> NDArray[np.float64]:
    """One-arm chunks ``[B, 32, 7]`` placed in their arm's slot of zero dual chunks ``[B, 32, 14]``:
    the layout ``denormalize`` and the statistics are written for."""
    dual = np.zeros(arm_chunks.shape[:-1] + (2 * ARM_DOFS,))
    for arm, dims in enumerate(ARM_SLICES):
        dual[arms == arm, :, dims] = arm_chunks[arms == arm]
    return dual


class ErrorTotals:
    """Running sums of squared errors (normalised, and absolute per DOF) and code hits."""

    def __init__(self, codebook_size: int) -> None:
        self.chunks = 0
        self.normalised_sum = 0.0
        self.normalised_count = 0
        self.dof_sum = np.zeros(2 * ARM_DOFS)
        self.dof_count = np.zeros(2 * ARM_DOFS, dtype=np.int64)
        self.code_counts = np.zeros(codebook_size, dtype=np.int64)

    def add(self, target: NDArray[np.float64], recon: NDArray[np.float64], arms: NDArray[np.int64], stats: NormStats) -> None:
        """One batch of one-arm chunks ``[B, 32, 7]`` (normalised) of one dataset."""
        self.chunks += len(target)
        self.normalised_sum += float(np.square(recon - target).sum())
        self.normalised_count += target.size
        # The empty slot is zero in both and denormalises to the same values: it adds no error.
        q01, q99 = stats.action_q01, stats.action_q99
        error = denormalize(_as_dual(recon, arms), q01, q99) - denormalize(_as_dual(target, arms), q01, q99)
        self.dof_sum += np.square(error).sum(axis=(0, 1))
        for arm, dims in enumerate(ARM_SLICES):
            self.dof_count[dims] += int((arms == arm).sum()) * target.shape[1]

    def add_codes(self, indices: torch.Tensor) -> None:
        self.code_counts += torch.bincount(indices.reshape(-1).cpu(), minlength=len(self.code_counts)).numpy()

    @property
    def normalised_mse(self) -> float:
        return self.normalised_sum / self.normalised_count

    def per_dof_mse(self) -> dict[str, float | None]:
        return {
            name: float(total / count) if count else None
            for name, total, count in zip(POSE14_NAMES, self.dof_sum, self.dof_count, strict=True)
        }


@torch.no_grad()
def reconstruct(model: ActVAE, chunks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(reconstructions, code indices)`` through the discrete bottleneck, as tokens would go."""
    indices = model.quantizer.nearest(model.encode_latents(chunks))
    return model.decode_indices(indices), indices


def _check_model(model: ActVAE, ckpt: Path) -> None:
    c = model.config
    if (c.chunk_size, c.action_dim) != (CHUNK_SIZE, ARM_DOFS):
        raise ClapDataError(
            f"{ckpt} models [{c.chunk_size}, {c.action_dim}] chunks; clap-data chunks are one arm's [{CHUNK_SIZE}, {ARM_DOFS}]"
        )


def evaluate_act_vae(
    ckpt: Path,
    roots: list[Path],
    stats: str = "openclap",
    holdout: Holdout | None = Holdout(),
    batch_size: int = 512,
    device: str = "auto",
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> EvalReport:
    """Reconstruction quality of ``ckpt`` on the held-out chunks of ``roots``; see the module docstring.

    Pass the ``stats`` and ``holdout`` the checkpoint was trained with, or the "held-out" chunks may
    include training data. ``holdout=None`` scores every chunk, for weights trained on none of ``roots``
    (an import has no training split): the training side of a split that holds nothing out.
    """
    if not roots:
        raise ClapDataError("no datasets given to evaluate the Act-VAE on")
    if batch_size < 1:
        raise ClapDataError(f"batch size must be at least 1, got {batch_size}")
    where = pick_device(device)
    model, sha256 = load_act_vae(Path(ckpt), str(where))
    _check_model(model, Path(ckpt))
    split, held_out = (NOTHING_HELD_OUT, False) if holdout is None else (holdout, True)
    pool = ChunkPool([Path(r) for r in roots], stats, split, held_out=held_out, max_frames=max_frames)
    totals = ErrorTotals(model.config.codebook_size)
    for position, chunks, arms in pool.batches(batch_size):
        recon, indices = reconstruct(model, chunks.to(where))
        totals.add(chunks.double().numpy(), recon.double().cpu().numpy(), arms, pool.datasets[position].stats)
        totals.add_codes(indices)
    used = int((totals.code_counts > 0).sum())
    size = model.config.codebook_size
    return EvalReport(
        ckpt=str(ckpt), sha256=sha256, num_queries=model.config.num_queries, codebook_size=size,
        chunks=totals.chunks, normalised_mse=totals.normalised_mse, psnr_db=psnr_db(totals.normalised_mse),
        per_dof_mse=totals.per_dof_mse(), code_usage=used / size, perplexity=perplexity_from_counts(totals.code_counts),
        dead_codes=size - used, holdout=None if holdout is None else holdout.to_dict(),
        stats_ids={str(d.root): d.stats.stats_id for d in pool.datasets}, device=str(where),
        notice="; ".join(n for n in (pool.notice, EVERY_CHUNK if holdout is None else "") if n),
    )

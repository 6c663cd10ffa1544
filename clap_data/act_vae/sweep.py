"""Rate–distortion sweep of the Act-VAE over (Nq, K), as in the paper's Table V (METHOD.md §3).

Each point trains its own checkpoint into ``OUT/nq{Nq}_k{K}/`` with :func:`train_act_vae`, so an
interrupted sweep rerun with the same arguments resumes: finished points are reused, a half-trained
one continues from its last save. Each point is then evaluated on the held-out chunks and the
table is rewritten after every point (``sweep.csv``, ``sweep.json``, ``sweep.md``, ``sweep.png``),
so a partial sweep still leaves a usable table behind.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from clap_data.act_vae.evaluation import PEAK, evaluate_act_vae, json_number
from clap_data.act_vae.training import StepMetrics, TrainOptions, preset_config, train_act_vae
from clap_data.actions import CHUNK_SIZE
from clap_data.atomic import temp_sibling, write_json_atomic, write_text_atomic
from clap_data.errors import ClapDataError
from clap_data.models import ActVAEConfig
from clap_data.splits import Holdout

ARM_ACTION_DIMS = 7


def rate(
    num_queries: int, codebook_size: int, mse: float, chunk_size: int = CHUNK_SIZE, action_dim: int = ARM_ACTION_DIMS, peak: float = PEAK
) -> float:
    """The paper's rate ``r = Nq·log2(K) / (Na·Da·log2(R/√MSE))``: bits spent per action value over
    the bits of precision the reconstruction achieves.

    Our Act-VAE encodes one arm at a time, so Na = 32 steps and Da = 7 values (one arm), and Nq is
    the codes **per arm**. 0 for a perfect reconstruction; NaN when ``MSE ≥ R²`` (PSNR ≤ 0 dB), where
    the formula has no meaning.
    """
    if num_queries < 1 or codebook_size < 1 or chunk_size < 1 or action_dim < 1 or peak <= 0:
        raise ClapDataError("rate needs positive Nq, K, chunk size, action dims and peak")
    if not mse >= 0:
        raise ClapDataError(f"MSE must be a non-negative number, got {mse}")
    if mse == 0:
        return 0.0
    precision_bits = math.log2(peak / math.sqrt(mse))
    if precision_bits <= 0:
        return math.nan
    return num_queries * math.log2(codebook_size) / (chunk_size * action_dim * precision_bits)


@dataclass(frozen=True)
class SweepPoint:
    """One (Nq, K) setting of the sweep."""

    num_queries: int
    codebook_size: int

    @property
    def name(self) -> str:
        """Its checkpoint folder under the sweep's output folder."""
        return f"nq{self.num_queries}_k{self.codebook_size}"

    @property
    def label(self) -> str:
        return f"{self.num_queries}/{self.codebook_size}"


@dataclass
class SweepRow:
    """One line of the rate–distortion table (``mse``: normalised, on held-out chunks)."""

    num_queries: int
    codebook_size: int
    mse: float
    psnr_db: float
    rate: float
    code_usage: float
    perplexity: float
    steps: int
    ckpt: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: inf/NaN (perfect or useless reconstructions) become None."""
        return {k: json_number(v) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}


SweepProgress = Callable[[SweepPoint, StepMetrics, int], None]
FIELDS = [field.name for field in dataclasses.fields(SweepRow)]


def sweep_points(num_queries: list[int], codebook_sizes: list[int]) -> list[SweepPoint]:
    """Every (Nq, K) pair once, sorted by (Nq, K)."""
    if not num_queries or not codebook_sizes:
        raise ClapDataError("a sweep needs at least one Nq and one K")
    return [SweepPoint(nq, k) for nq in sorted(set(num_queries)) for k in sorted(set(codebook_sizes))]


def _point_row(point: SweepPoint, roots: list[Path], ckpt: Path, config: ActVAEConfig, preset: str, options: TrainOptions,
               on_progress: SweepProgress | None) -> SweepRow:
    """Train (or reuse) one point's checkpoint and evaluate it."""
    forward = (lambda metrics, total: on_progress(point, metrics, total)) if on_progress else None
    trained = train_act_vae(roots, ckpt, preset=preset, config=config, options=options, on_progress=forward)
    report = evaluate_act_vae(ckpt, roots, stats=options.stats, holdout=options.holdout, device=options.device)
    return SweepRow(
        num_queries=point.num_queries, codebook_size=point.codebook_size, mse=report.normalised_mse, psnr_db=report.psnr_db,
        rate=rate(point.num_queries, point.codebook_size, report.normalised_mse), code_usage=report.code_usage,
        perplexity=report.perplexity, steps=trained.steps, ckpt=str(ckpt),
    )


def run_sweep(
    roots: list[Path],
    out_dir: Path,
    num_queries: list[int],
    codebook_sizes: list[int],
    steps: int,
    preset: str = "small",
    stats: str = "openclap",
    holdout: Holdout = Holdout(),
    batch_size: int = 128,
    device: str = "auto",
    seed: int = 0,
    on_progress: SweepProgress | None = None,
) -> list[SweepRow]:
    """Train and evaluate every (Nq, K) point; see the module docstring. Rows sorted by (Nq, K).

    ``on_progress(point, metrics, total_steps)`` relays the training progress of the point being
    trained; a reused point reports nothing.
    """
    if not roots:
        raise ClapDataError("no datasets given to sweep the Act-VAE on")
    if steps < 1:
        raise ClapDataError(f"steps must be at least 1, got {steps}")
    points = sweep_points(num_queries, codebook_sizes)
    configs = {p: preset_config(preset, num_queries=p.num_queries, codebook_size=p.codebook_size) for p in points}
    options = TrainOptions(steps=steps, batch_size=batch_size, stats=stats, holdout=holdout, device=device, seed=seed)
    out_dir = Path(out_dir)
    settings = {
        "datasets": [str(r) for r in roots], "preset": preset, "steps": steps, "stats": stats,
        "holdout": holdout.to_dict(), "batch_size": batch_size, "seed": seed,
    }
    rows: list[SweepRow] = []
    for point in points:
        rows.append(_point_row(point, list(roots), out_dir / point.name, configs[point], preset, options, on_progress))
        write_sweep_files(out_dir, rows, settings)
    return rows


def write_sweep_files(out_dir: Path, rows: list[SweepRow], settings: dict[str, Any]) -> None:
    """``sweep.csv``, ``sweep.json``, ``sweep.md`` and ``sweep.png``, each replaced atomically."""
    dicts = [row.to_dict() for row in rows]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(dicts)
    write_text_atomic(out_dir / "sweep.csv", buffer.getvalue())
    write_json_atomic(out_dir / "sweep.json", {"settings": settings, "rows": dicts})
    write_text_atomic(out_dir / "sweep.md", sweep_markdown(rows))
    _write_plot(out_dir / "sweep.png", rows)


def _cell(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "—"


def sweep_markdown(rows: list[SweepRow]) -> str:
    """The paper's Table V columns (Nq, K, MSE, PSNR, rate r), plus held-out code usage."""
    lines = [
        "| Nq | K | MSE | PSNR (dB) | rate r | code usage |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = [
            str(row.num_queries), str(row.codebook_size), _cell(row.mse, ".3e"), _cell(row.psnr_db, ".2f"),
            _cell(row.rate, ".4f"), _cell(row.code_usage, ".1%"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    note = "MSE and PSNR on held-out one-arm chunks in the normalised space (R = 2); Nq is codes per arm, Na = 32, Da = 7."
    return "\n".join(lines) + "\n\n" + note + "\n"


def _write_plot(path: Path, rows: list[SweepRow]) -> None:
    """PSNR against rate (each point labelled Nq/K), and MSE against Nq per K on a log axis."""
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    left, right = figure.subplots(1, 2)
    for row in rows:
        left.plot(row.rate, row.psnr_db, "o", color="tab:blue")
        left.annotate(SweepPoint(row.num_queries, row.codebook_size).label, (row.rate, row.psnr_db),
                      textcoords="offset points", xytext=(4, 4), fontsize=8)
    left.set(xlabel="rate r", ylabel="PSNR (dB)", title="Rate–distortion (held-out)")
    left.grid(alpha=0.3)
    left.margins(0.15)  # room for the labels
    for size in sorted({row.codebook_size for row in rows}):
        points = [row for row in rows if row.codebook_size == size and row.mse > 0]
        right.plot([row.num_queries for row in points], [row.mse for row in points], "o-", label=f"K = {size}")
    right.set(xlabel="Nq (codes per arm)", ylabel="MSE (normalised)", yscale="log", title="Reconstruction error")
    right.set_xticks(sorted({row.num_queries for row in rows}))
    right.grid(alpha=0.3, which="both")
    right.legend()
    tmp = temp_sibling(path)
    try:
        figure.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

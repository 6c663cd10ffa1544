"""Train the Act-VAE on one-arm chunks of unified robot datasets (METHOD.md §3, Table IX).

The loop is plain PyTorch on one device (a GPU when there is one): random batches from a
:class:`ChunkPool`, loss = reconstruction + codebook + β·commitment, the codebook in its own
optimizer group at ``codebook_lr_scale`` × the learning rate, and dead codes (unused since the
last check) re-seeded from live codes every ``dead_code_check_every`` steps. It saves every
``save_every`` steps and at the end; rerunning the same command resumes from the last save, and asking
for more steps than a finished run had continues it; other settings are refused unless ``overwrite``.
A fine-tune (``options.init``: an imported or trained checkpoint folder) builds that folder's model and
loads its weights before step 0; their sha256 is one of the run's settings, so another ``--init`` is
refused too, and a resumed fine-tune restores its own saved weights, not the init's.

A resumed run (after a clean stop or a ``kill -9``) gives the same bytes as an uninterrupted one on a CPU:
the save holds everything the rest of the loop reads (:mod:`clap_data.train_state`): weights, optimizer,
the quantiser's code-usage counts since the last dead-code check, every RNG stream (data order included)
and the log window behind the reported metrics. It also holds the run's settings, so a crash between it and
the exported weights cannot strand the run: a rerun with nothing left to train exports them again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clap_data import train_state
from clap_data.act_vae.checkpoint import (
    TRAINING_STATE_NAME,
    export_weights,
    load_act_vae,
    read_training_meta,
    resume_point,
)
from clap_data.act_vae.chunk_pool import DEFAULT_MAX_FRAMES, ChunkPool
from clap_data.errors import ClapDataError
from clap_data.locking import exclusive_lock
from clap_data.models import ActVAE, ActVAEConfig, checkpoint_sha256
from clap_data.splits import Holdout

PRESETS: dict[str, Callable[[], ActVAEConfig]] = {"release": ActVAEConfig.release, "small": ActVAEConfig.small}
# Table IX: the release VAE trains at 2e-5 (codebook ×50 = 1e-3). The small preset is ~100× smaller
# and trains for minutes, not days: 1e-3 (codebook 5e-2) reaches the same behaviour there.
DEFAULT_LEARNING_RATE = {"release": 2e-5, "small": 1e-3}


def preset_config(preset: str, **overrides: Any) -> ActVAEConfig:
    """A preset's config with some fields replaced (e.g. ``num_queries``, ``codebook_size`` for sweeps)."""
    if preset not in PRESETS:
        raise ClapDataError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[preset]().to_dict()
    config.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ActVAEConfig(**config)
    except (TypeError, ValueError) as exc:
        raise ClapDataError(f"invalid Act-VAE settings: {exc}") from None


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ClapDataError(f"--device {requested} was asked for, but this machine has no usable CUDA GPU")
    return torch.device(requested)


@dataclass(frozen=True)
class TrainOptions:
    steps: int = 2000
    batch_size: int = 128
    learning_rate: float | None = None  # None: the preset's default
    stats: str = "openclap"
    holdout: Holdout = field(default_factory=Holdout)
    device: str = "auto"
    seed: int = 0
    save_every: int = 500
    log_every: int = 25
    overwrite: bool = False
    max_frames: int = DEFAULT_MAX_FRAMES  # frames held in memory; more means a fixed random subset of episodes
    init: Path | None = None  # a checkpoint folder whose weights a fresh run starts from (act_vae.fine_tuning)


@dataclass
class StepMetrics:
    """Means over the log window up to ``step`` (code usage: distinct codes hit in it / K). Windows are the
    ``log_every`` steps ending at a multiple of it; a run's last step reports the window so far."""

    step: int
    loss: float
    recon_mse: float
    code_usage: float
    steps_per_second: float


@dataclass
class TrainReport:
    ckpt: Path
    sha256: str
    steps: int
    resumed_from: int
    already_complete: bool
    train_chunks: int
    device: str
    seconds: float
    last: StepMetrics | None
    reseeded_codes: int
    notice: str = ""  # e.g. that a subset of episodes was used (--max-frames)


def _run_identity(
    roots: list[Path], preset: str | None, config: ActVAEConfig, options: TrainOptions, lr: float,
    init_sha256: str | None,
) -> dict[str, Any]:
    """What must match for a rerun to resume rather than start afresh. ``init_sha256`` is there only for a
    fine-tune, so that runs saved before ``--init`` existed still resume."""
    identity = {
        "datasets": [str(Path(r).resolve()) for r in roots],
        "preset": preset,
        "config": config.to_dict(),
        "stats": options.stats,
        "holdout": options.holdout.to_dict(),
        "batch_size": options.batch_size,
        "learning_rate": lr,
        "seed": options.seed,
        "max_frames": options.max_frames,
    }
    return identity if init_sha256 is None else {**identity, "init_sha256": init_sha256}


def _init_sha256(init: Path, ckpt: Path) -> str:
    """The identity of the weights a fine-tune starts from."""
    if Path(init).resolve() == ckpt.resolve():
        raise ClapDataError(f"--init {init} is the --out folder; a fine-tune writes a checkpoint of its own")
    try:
        return checkpoint_sha256(init)
    except FileNotFoundError:
        raise ClapDataError(f"--init {init} is not an Act-VAE checkpoint (no model.safetensors)") from None


def _start_from(model: ActVAE, init: Path) -> None:
    """Put the weights of the checkpoint folder ``init`` into a freshly built ``model`` (before step 0)."""
    initial, _ = load_act_vae(init)
    if initial.config != model.config:
        differ = sorted(k for k, v in initial.config.to_dict().items() if model.config.to_dict()[k] != v)
        raise ClapDataError(f"--init {init} holds another model than this run's ({', '.join(differ)} differ)")
    model.load_state_dict(initial.state_dict())


def _current_config(run: dict[str, Any]) -> dict[str, Any]:
    """A run saved before a config field existed trained with its default: compare it as such."""
    if isinstance(run.get("config"), dict):
        with contextlib.suppress(TypeError, ValueError):  # else the comparison names the difference
            return {**run, "config": ActVAEConfig(**run["config"]).to_dict()}
    return run


def _save_state(
    ckpt: Path, model: ActVAE, optimizer: torch.optim.Optimizer, rng: np.random.Generator, loop: dict[str, Any]
) -> None:
    """Everything the rest of the run reads; saved before the exports, so a crash in between leaves a
    complete resume point."""
    state = train_state.capture(model, optimizer, generators={"batches": rng}, extra=loop)
    train_state.save(ckpt / TRAINING_STATE_NAME, state)


def train_act_vae(
    roots: list[Path],
    ckpt: Path,
    preset: str | None = "small",
    config: ActVAEConfig | None = None,
    options: TrainOptions | None = None,
    on_progress: Callable[[StepMetrics, int], None] | None = None,
) -> TrainReport:
    """Train (or resume training) into the checkpoint folder ``ckpt``; see the module docstring. A fine-tune
    (``options.init``) passes ``init``'s config and the preset it is, None for none
    (:func:`clap_data.act_vae.fine_tuning.init_config`)."""
    options = options or TrainOptions()
    config = config or preset_config(preset or "small")
    if options.steps < 1 or options.batch_size < 1 or options.save_every < 1 or options.log_every < 1:
        raise ClapDataError("steps, batch size, save and log intervals must all be at least 1")
    default_lr = DEFAULT_LEARNING_RATE.get(preset, DEFAULT_LEARNING_RATE["small"]) if preset else None
    lr = options.learning_rate or default_lr
    if lr is None:
        raise ClapDataError("the model is no preset's, so it has no default learning rate; pass --lr")
    ckpt = Path(ckpt)
    init_sha256 = None if options.init is None else _init_sha256(options.init, ckpt)
    identity = _run_identity(roots, preset, config, options, lr, init_sha256)
    device = pick_device(options.device)
    started = time.perf_counter()
    with exclusive_lock(ckpt / ".lock", ckpt):
        saved = resume_point(ckpt, identity, options.overwrite, "Act-VAE", _current_config)
        pool = ChunkPool(list(roots), options.stats, options.holdout, held_out=False, max_frames=options.max_frames)
        pool.require_samples()
        torch.manual_seed(options.seed)
        model = ActVAE(config).to(device)
        optimizer = torch.optim.Adam(model.param_groups(lr))
        rng = np.random.default_rng(options.seed)
        # what the loop itself carries across a resume: settings, step, the open log window, the last metrics
        loop: dict[str, Any] = {
            "run": identity, "step": 0, "window_loss": [], "window_mse": [],
            "hits": torch.zeros(config.codebook_size, dtype=torch.int64), "last": None,
        }
        if saved is not None:  # a resumed fine-tune restores its own weights, not the init's
            loop = train_state.restore(saved, model, optimizer, generators={"batches": rng})
        elif options.init is not None:
            _start_from(model, options.init)
        step, hits = int(loop["step"]), loop["hits"].to(device)
        last = StepMetrics(**loop["last"]) if loop["last"] else None
        resumed_from = step

        def meta() -> dict[str, Any]:
            return {
                "run": identity, "step": step, "train_chunks": len(pool), "last": last.__dict__ if last else None,
                "device": str(device), "stats_ids": {str(d.root): d.stats.stats_id for d in pool.datasets},
                **({"init_ckpt": str(Path(options.init).resolve())} if options.init else {}),
            }

        if step >= options.steps:
            done = read_training_meta(ckpt)
            # the state is saved before the exports: after a crash between them, the exports are one save behind
            sha = done["sha256"] if done.get("step") == step else export_weights(ckpt, model, meta())
            return TrainReport(ckpt, sha, step, resumed_from, True, len(pool), str(device), 0.0, None, 0, pool.notice)
        model.train()
        window_start, timed_steps = time.perf_counter(), 0  # for steps/s: this process's steps of the window
        reseeded = 0
        while step < options.steps:
            batch = pool.sample(options.batch_size, rng).to(device)
            out = model(batch)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            step += 1
            timed_steps += 1
            loop["window_loss"].append(float(out["loss"].detach()))
            loop["window_mse"].append(float(out["recon_mse"].detach()))
            hits += torch.bincount(out["indices"].reshape(-1), minlength=config.codebook_size)
            if step % config.dead_code_check_every == 0:
                latents = out["z_e"] if config.reseed_from == "latents" else None
                reseeded += model.reseed_dead_codes(latents)
            window_ends = step % options.log_every == 0
            if window_ends or step == options.steps:
                elapsed = time.perf_counter() - window_start
                last = StepMetrics(
                    step=step,
                    loss=float(np.mean(loop["window_loss"])),
                    recon_mse=float(np.mean(loop["window_mse"])),
                    code_usage=float((hits > 0).float().mean()),
                    steps_per_second=timed_steps / elapsed if elapsed > 0 else 0.0,
                )
                if not np.isfinite(last.loss):
                    raise ClapDataError(f"training diverged at step {step} (loss {last.loss}); lower --lr and rerun with --overwrite")
                if on_progress:
                    on_progress(last, options.steps)
            if window_ends:  # a last step inside a window leaves it open: a resumed run goes on filling it
                loop["window_loss"], loop["window_mse"] = [], []
                hits.zero_()
                window_start, timed_steps = time.perf_counter(), 0
            if step % options.save_every == 0 or step == options.steps:
                loop.update(step=step, hits=hits, last=last.__dict__ if last else None)
                _save_state(ckpt, model, optimizer, rng, loop)
                sha = export_weights(ckpt, model, meta())
    seconds = time.perf_counter() - started
    chunks = len(pool)
    return TrainReport(ckpt, sha, step, resumed_from, False, chunks, str(device), seconds, last, reseeded, pool.notice)

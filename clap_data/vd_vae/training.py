"""Train the VD-VAE on frame pairs of robot and human datasets (METHOD.md §4, paper Algorithm 2).

The items come from :mod:`clap_data.vd_vae.pairs_dataset` (clean backbone tokens spooled once per frame; the
online branch's tokens of augmented pixels computed per batch). The loop is plain PyTorch on one device: AdamW
over the trainable parameters (the Act-VAE codebook and the EMA teacher are frozen), one ``update_teacher()``
after every optimizer step, progress with every loss term and the share of Act and env codes used in the log
window. ``siglip_weight`` 0 is the no-contrastive ablation.

Exact resume, as the Act-VAE trainer (:mod:`clap_data.act_vae.training`): every ``save_every`` steps the whole
loop state is saved with :mod:`clap_data.train_state` — weights (teacher included), optimizer, every RNG stream,
the batch sampler's numpy generator and the augmentation's torch generator (in ``extra``), the open log window —
so a rerun continues bit-identically on a CPU. The run's settings (datasets, cameras, Act-VAE sha256, backbone
identity, model, holdout, batch, lr, seed, augmentation) are saved with it: other settings are refused unless
``overwrite``; more ``steps`` continue a finished run.
"""

from __future__ import annotations

import dataclasses
import shutil
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
from clap_data.act_vae.training import pick_device
from clap_data.errors import ClapDataError
from clap_data.locking import exclusive_lock
from clap_data.models import VDVAE, VDVAEConfig
from clap_data.models.backbone import load_backbone
from clap_data.splits import Holdout
from clap_data.vd_vae.frame_pairs import GAP
from clap_data.vd_vae.pairs_dataset import PairPool, SpooledPairs, SpoolSource, build_spool

PRESETS: dict[str, Callable[[], VDVAEConfig]] = {"release": VDVAEConfig.release, "small": VDVAEConfig.small}
DEFAULT_LEARNING_RATE = {"release": 1e-4, "small": 1e-3}  # the small network trains in minutes, as the Act-VAE's
CACHE_DIR = ".cache"  # inside the checkpoint folder; a dot name, so clear_checkpoint does not call it foreign
LOSS_TERMS = ("loss", "mse", "q", "commit", "siglip", "l1")


@dataclass(frozen=True)
class VDTrainOptions:
    steps: int = 2000
    batch_size: int = 32
    learning_rate: float | None = None  # None: the preset's default
    siglip_weight: float | None = None  # None: the preset's (0.1); 0 is the no-contrastive ablation
    holdout: Holdout = field(default_factory=Holdout)
    device: str = "auto"
    seed: int = 0
    save_every: int = 500
    log_every: int = 25
    augment: bool = True
    overwrite: bool = False


@dataclass
class VDStepMetrics:
    """Means over the log window up to ``step``; code usage: distinct codes hit in the window / codebook size."""

    step: int
    loss: float
    mse: float
    q: float
    commit: float
    siglip: float
    l1: float
    code_usage: float
    env_code_usage: float
    steps_per_second: float


@dataclass
class VDTrainReport:
    ckpt: Path
    sha256: str
    steps: int
    resumed_from: int
    already_complete: bool
    train_pairs: dict[str, int]  # dataset → pairs
    device: str
    seconds: float
    last: VDStepMetrics | None


def _config(preset: str, backbone_dims: tuple[int, int], siglip_weight: float | None) -> VDVAEConfig:
    if preset not in PRESETS:
        raise ClapDataError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    patches, dim = backbone_dims
    config = dataclasses.replace(PRESETS[preset](), num_patches=patches, feature_dim=dim)
    return config if siglip_weight is None else dataclasses.replace(config, siglip_weight=siglip_weight)


def train_vd_vae(
    cameras: dict[Path, str],
    act_vae_ckpt: Path,
    backbone_path: Path,
    ckpt: Path,
    preset: str = "small",
    options: VDTrainOptions | None = None,
    on_progress: Callable[[VDStepMetrics, int], None] | None = None,
) -> VDTrainReport:
    """Train (or resume) into the checkpoint folder ``ckpt``; ``cameras``: each dataset (robot or human) and the
    camera to pair. See the module docstring."""
    options = options or VDTrainOptions()
    if options.steps < 1 or options.batch_size < 1 or options.save_every < 1 or options.log_every < 1:
        raise ClapDataError("steps, batch size, save and log intervals must all be at least 1")
    if not cameras:
        raise ClapDataError("give at least one dataset (--robot or --human)")
    lr = options.learning_rate or DEFAULT_LEARNING_RATE.get(preset, DEFAULT_LEARNING_RATE["small"])
    ckpt = Path(ckpt)
    device = pick_device(options.device)
    act_vae, act_sha = load_act_vae(act_vae_ckpt, str(device))
    stats_kind = read_training_meta(act_vae_ckpt).get("run", {}).get("stats", "openclap")
    backbone = load_backbone(backbone_path).to(device)
    config = _config(preset, (backbone.num_patches, backbone.hidden_size), options.siglip_weight)
    roots = [Path(r).resolve() for r in cameras]
    identity = {
        "datasets": [str(r) for r in roots], "cameras": {str(Path(r).resolve()): c for r, c in cameras.items()},
        "act_vae_sha256": act_sha, "act_vae_stats": stats_kind, "backbone": backbone.identity(), "preset": preset,
        "config": config.to_dict(), "holdout": options.holdout.to_dict(), "gap": GAP, "batch_size": options.batch_size,
        "learning_rate": lr, "seed": options.seed, "augment": options.augment,
    }
    started = time.perf_counter()
    with exclusive_lock(ckpt / ".lock", ckpt):
        if options.overwrite:  # the spooled pairs belong to the discarded run's settings
            shutil.rmtree(ckpt / CACHE_DIR, ignore_errors=True)
        saved = resume_point(ckpt, identity, options.overwrite, "VD-VAE")
        parts = []
        for i, (root, camera) in enumerate(zip(roots, cameras.values(), strict=True)):
            folder = ckpt / CACHE_DIR / f"{i}-{root.name}"
            spool_id = {k: identity[k] for k in ("act_vae_sha256", "act_vae_stats", "backbone", "holdout", "gap", "augment")}
            build_spool(SpoolSource(root, camera), folder, {**spool_id, "root": str(root), "camera": camera}, backbone,
                        act_vae, stats_kind, options.holdout, GAP, options.augment)
            parts.append(SpooledPairs(folder, root))
        pool = PairPool(parts, (act_vae.config.num_queries, act_vae.config.code_dim))
        pairs = {str(p.root): len(p) for p in parts}

        torch.manual_seed(options.seed)
        model = VDVAE.from_act_vae(act_vae, config, sha256=act_sha).to(device)
        del act_vae  # its latents are spooled and its codebook copied
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        rng = np.random.default_rng(options.seed)
        aug = torch.Generator().manual_seed(options.seed)
        loop: dict[str, Any] = {
            "run": identity, "step": 0, "window": {k: [] for k in LOSS_TERMS}, "last": None,
            "hits": torch.zeros(config.act_codebook_size, dtype=torch.int64),
            "env_hits": torch.zeros(config.env_codebook_size, dtype=torch.int64), "aug": aug.get_state(),
        }
        if saved is not None:
            loop = train_state.restore(saved, model, optimizer, generators={"batches": rng})
            aug.set_state(loop["aug"])
        step, hits, env_hits = int(loop["step"]), loop["hits"].to(device), loop["env_hits"].to(device)
        last = VDStepMetrics(**loop["last"]) if loop["last"] else None
        resumed_from = step

        def meta() -> dict[str, Any]:
            return {"run": identity, "step": step, "train_pairs": pairs, "last": last.__dict__ if last else None,
                    "device": str(device)}

        if step >= options.steps:
            done = read_training_meta(ckpt)
            sha = done["sha256"] if done.get("step") == step else export_weights(ckpt, model, meta())
            return VDTrainReport(ckpt, sha, step, resumed_from, True, pairs, str(device), 0.0, None)
        model.train()
        window_start, timed_steps = time.perf_counter(), 0
        while step < options.steps:
            batch = pool.sample(options.batch_size, rng, backbone, aug if options.augment else None)
            out = model(batch.patches.to(device), batch.arm_mask, batch.is_robot, batch.robot_targets.to(device),
                        None if batch.patches_aug is None else batch.patches_aug.to(device))
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            model.update_teacher()
            step += 1
            timed_steps += 1
            for k in LOSS_TERMS:
                loop["window"][k].append(float(out[k].detach()))
            hits += torch.bincount(out["action_indices"].reshape(-1), minlength=config.act_codebook_size)
            env_hits += torch.bincount(out["env_indices"].reshape(-1), minlength=config.env_codebook_size)
            window_ends = step % options.log_every == 0
            if window_ends or step == options.steps:
                elapsed = time.perf_counter() - window_start
                means = {k: float(np.mean(v)) for k, v in loop["window"].items()}
                last = VDStepMetrics(step=step, **means, code_usage=float((hits > 0).float().mean()),
                                     env_code_usage=float((env_hits > 0).float().mean()),
                                     steps_per_second=timed_steps / elapsed if elapsed > 0 else 0.0)
                if not np.isfinite(last.loss):
                    raise ClapDataError(f"training diverged at step {step} (loss {last.loss}); lower --lr and rerun "
                                        "with --overwrite")
                if on_progress:
                    on_progress(last, options.steps)
            if window_ends:  # a last step inside a window leaves it open: a resumed run goes on filling it
                loop["window"] = {k: [] for k in LOSS_TERMS}
                hits.zero_()
                env_hits.zero_()
                window_start, timed_steps = time.perf_counter(), 0
            if step % options.save_every == 0 or step == options.steps:
                loop.update(step=step, hits=hits, env_hits=env_hits, aug=aug.get_state(),
                            last=last.__dict__ if last else None)
                state = train_state.capture(model, optimizer, generators={"batches": rng}, extra=loop)
                train_state.save(ckpt / TRAINING_STATE_NAME, state)
                sha = export_weights(ckpt, model, meta())
    return VDTrainReport(ckpt, sha, step, resumed_from, False, pairs, str(device), time.perf_counter() - started, last)

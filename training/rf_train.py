"""The CLAP-RF + Knowledge Matching training loop (METHOD.md §6, paper §III-E, Algorithm 4), one process of a DDP
run; Ray-free. :mod:`clap_data.training.ray_launcher` runs it on Ray Train workers; tests call :func:`train_loop`.

Stage 2 of the paper's post-training: a rectified-flow head (:mod:`~clap_data.training.rf_head`) learns continuous
32-step chunks from a trained CLAP-NTP checkpoint's hidden states, on **robot samples only** (human video has no
actions: the loader's mixing weights leave human datasets out, :meth:`~clap_data.training.ntp_data.ShardSet.
robot_mix`). One step, per rank:

1. the VLM runs once on prompt + ground-truth answer (:func:`~clap_data.training.prompts.encode_training_batch`,
   wrists dropped as in NTP) with its hidden states; the head's context is the ``vl_layers`` at the prompt positions
   only (:mod:`~clap_data.training.rf_model` says why that is exactly what acting shows it);
2. the head gets the state normalised with its embodiment's state q01/q99 (the shards' statistics; the inactive arm
   zeroed, :func:`clap_data.actions.normalized_state`), the shard's normalised chunk ``actions`` and its arm mask;
   the flow time and noise come from a generator seeded by (seed, step, rank), so a resumed run draws them again;
3. loss = flow-matching loss + α · KL(p_ref ‖ p_policy) over the answer's positions
   (:mod:`~clap_data.training.knowledge_matching`), the reference a frozen copy of the NTP model loaded once.

Three arms: **Knowledge Matching** (α > 0, default 0.005: backbone and head train, the reference anchors the
backbone's token distribution), **plain fine-tuning** (α = 0: no reference is loaded, KL not measured) and
**Knowledge Insulation** (``ki``: the backbone frozen and run without gradients, α must be 0, no reference).

Learning rates: the head (new, zero-initialised output) gets ``learning_rate``; the backbone, already trained,
``backbone_learning_rate``, by default a tenth of it — it should move little (KM's point), while the head has
everything to learn. Both on AdamW's warmup-then-constant schedule (:func:`~clap_data.training.train_common.
adamw_warmup`). On CUDA the forward runs under bf16 autocast (fp32 master weights) with gradient checkpointing,
and the reference is held in bf16 (it only runs forward, under that autocast); on a CPU everything is fp32.

``vl_layers`` default to an early and a middle layer of the VLM (:func:`default_vl_layers`, from its config: the
paper found early + middle best, Table VI, without giving indices). The head's shape defaults are CPU-small
(:class:`~clap_data.training.rf_head.RFHeadConfig`); pass a larger one for a real backbone.

Exact resume, logging and saving are :mod:`clap_data.training.train_common`'s, as for CLAP-NTP; the folder is
:mod:`clap_data.training.rf_checkpoint`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clap_data.actions import HUMAN, normalized_state
from clap_data.errors import ClapDataError
from clap_data.hashing import file_sha256
from clap_data.models.checkpoint import checkpoint_sha256
from clap_data.schemas.shards_v1 import ACTION_DIM, ACTIONS, ARM_MASK, CHUNK_STEPS, EMBODIMENT, SHARD_MANIFEST, STATE
from clap_data.training import train_common as common
from clap_data.training.knowledge_matching import DEFAULT_ALPHA, answer_kl, frozen_reference, km_loss
from clap_data.training.ntp_checkpoint import read_policy_meta
from clap_data.training.ntp_data import ShardSet, norm_stats
from clap_data.training.ntp_model import load_vlm
from clap_data.training.policy_checkpoint import weights_sha256
from clap_data.training.rf_checkpoint import export_rf
from clap_data.training.rf_head import RFHead, RFHeadConfig, check_against_vlm
from clap_data.training.rf_model import RFModel, answer_window

TARGETS = ("rf_state", "rf_actions", "rf_arm_mask")  # the batch's keys beside the VLM's inputs
BACKBONE_LR_FACTOR = 0.1  # the backbone's learning rate by default, relative to the head's


def default_vl_layers(num_layers: int) -> tuple[int, int]:
    """An early and a middle layer of a VLM of ``num_layers`` decoder layers, as ``output_hidden_states``
    indices: after a quarter and after half of the layers (Qwen3-VL-4B's 36: 9 and 18), kept distinct for
    shallow models (the 2-layer test VLM: 0, the embeddings, and 1)."""
    middle = max(1, num_layers // 2)
    return min(max(1, num_layers // 4), middle - 1), middle


@dataclass(frozen=True)
class RFTrainSettings:
    """One run's settings; all but ``steps``, ``save_every``, ``log_every``, ``flow_steps``,
    ``gradient_checkpointing`` and ``act_vae`` are its identity (a rerun with others is refused)."""

    init: str  # the CLAP-NTP checkpoint folder (absolute)
    shards: str
    out: str
    steps: int = 1000
    batch_size: int = 8  # per worker
    learning_rate: float = 1e-4  # the head's
    backbone_learning_rate: float | None = None  # None: learning_rate × BACKBONE_LR_FACTOR
    warmup_steps: int = 100
    weight_decay: float = 0.0
    km_alpha: float = DEFAULT_ALPHA
    ki: bool = False  # Knowledge Insulation: backbone frozen, no gradients, α = 0
    vl_layers: tuple[int, ...] | None = None  # None: default_vl_layers of the VLM
    head_width: int = 64
    head_depth: int = 4
    head_heads: int = 4
    head_mlp_ratio: float = 4.0
    head_learned_tokens: int = 4
    flow_steps: int = 4  # Euler steps when acting (recorded; training does not use it)
    wrist_drop: float = 0.5
    seed: int = 0
    save_every: int = 500
    log_every: int = 10
    gradient_checkpointing: bool = True  # on CUDA only
    act_vae: str | None = None  # the Act-VAE folder, when not where the NTP checkpoint recorded it

    def __post_init__(self) -> None:
        if self.km_alpha < 0 or not np.isfinite(self.km_alpha):
            raise ClapDataError(f"the Knowledge Matching weight α must be a finite number ≥ 0, got {self.km_alpha}")
        if self.ki and self.km_alpha != 0:
            raise ClapDataError(f"Knowledge Insulation freezes the backbone, so there is nothing for Knowledge "
                                f"Matching to hold: --ki takes no --km-alpha (α = {self.km_alpha:g} was asked for)")
        if self.flow_steps < 1:
            raise ClapDataError(f"acting needs at least one Euler step, got flow_steps {self.flow_steps}")
        if Path(self.out).absolute() == Path(self.init).absolute():
            raise ClapDataError(f"--out {self.out} is the NTP checkpoint itself; choose another folder")
        if self.vl_layers is not None:
            object.__setattr__(self, "vl_layers", tuple(int(i) for i in self.vl_layers))

    @property
    def mode(self) -> str:
        """``ki`` (Knowledge Insulation), ``km`` (Knowledge Matching, α > 0) or ``plain`` (α = 0)."""
        return "ki" if self.ki else "km" if self.km_alpha > 0 else "plain"

    @property
    def backbone_lr(self) -> float:
        if self.backbone_learning_rate is not None:
            return self.backbone_learning_rate
        return self.learning_rate * BACKBONE_LR_FACTOR

    def head_config(self, vlm_config: Any) -> RFHeadConfig:
        """The head's shape for the VLM of ``vlm_config``, checked against it."""
        text = vlm_config.get_text_config()
        layers = self.vl_layers if self.vl_layers is not None else default_vl_layers(text.num_hidden_layers)
        config = RFHeadConfig(vl_hidden_size=text.hidden_size, vl_layers=layers, width=self.head_width,
                              depth=self.head_depth, heads=self.head_heads, mlp_ratio=self.head_mlp_ratio,
                              num_learned_tokens=self.head_learned_tokens)
        check_against_vlm(config, vlm_config)
        return config

    def identity(self, shards: ShardSet, world_size: int) -> dict[str, Any]:
        """The run's identity; refuses an NTP checkpoint that does not fit the shards (:func:`read_init`)."""
        read_init(self, shards)
        return {
            "init": self.init, "init_weights_sha256": weights_sha256(Path(self.init)),
            "shards": str(Path(shards.root).absolute()), "manifest_sha256": file_sha256(shards.root / SHARD_MANIFEST),
            "act_vae_sha256": shards.act_vae["checkpoint_sha256"], "batch_size": self.batch_size,
            "world_size": world_size, "learning_rate": self.learning_rate,
            "backbone_learning_rate": None if self.ki else self.backbone_lr, "warmup_steps": self.warmup_steps,
            "weight_decay": self.weight_decay, "km_alpha": self.km_alpha, "ki": self.ki,
            "head": self.head_config(_vlm_config(self.init)).to_dict(), "wrist_drop": self.wrist_drop,
            "seed": self.seed,
        }


def _vlm_config(folder: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise ClapDataError(f"{folder} has no readable transformers config: {' '.join(str(exc).split())[:200]}") \
            from None


def robot_embodiments(shards: ShardSet) -> dict[str, list[bool]]:
    """The arm masks of the robot embodiments of the training split: what the head is trained on."""
    return {name: mask for name, mask in shards.embodiment_arm_masks().items() if name != HUMAN}


def read_init(settings: RFTrainSettings, shards: ShardSet) -> dict[str, Any]:
    """The NTP checkpoint's ``training.json``, refusing one whose tokens are not the shards' (another Act-VAE)
    or whose statistics differ from the shards' for an embodiment both have (its tokens would mean other chunks),
    and an ``act_vae`` override that is not the recorded Act-VAE."""
    ntp = read_policy_meta(Path(settings.init))
    recorded, exported = ntp["act_vae"]["checkpoint_sha256"], shards.act_vae["checkpoint_sha256"]
    if recorded != exported:
        raise ClapDataError(f"the NTP checkpoint {settings.init} was trained with Act-VAE {recorded[:16]}…, but the "
                            f"shards in {shards.root} hold tokens of {exported[:16]}…; export shards with its Act-VAE")
    for embodiment in robot_embodiments(shards):
        known = ntp["statistics"].get(embodiment)
        if known is not None and known != shards.statistics.get(embodiment):
            raise ClapDataError(f"the shards in {shards.root} normalise {embodiment} with other statistics "
                                f"({shards.statistics.get(embodiment, {}).get('id')}) than the NTP checkpoint "
                                f"{settings.init} was trained with ({known.get('id')})")
    if settings.act_vae is not None:
        try:
            sha = checkpoint_sha256(settings.act_vae)
        except FileNotFoundError as exc:
            raise ClapDataError(f"--act-vae {settings.act_vae} is not an Act-VAE checkpoint ({exc})") from None
        if sha != recorded:
            raise ClapDataError(f"the Act-VAE at {settings.act_vae} (sha256 {sha[:16]}…) is not the one "
                                f"{settings.init} was trained with ({recorded[:16]}…)")
    return ntp


def _checkpoint_meta(settings: RFTrainSettings, shards: ShardSet, ntp: dict[str, Any], identity: dict[str, Any],
                     head: RFHeadConfig, world_size: int, device: torch.device) -> dict[str, Any]:
    """What ``training.json`` records besides step and metrics: all a policy needs to act without the shards."""
    embodiments = robot_embodiments(shards)
    statistics = {**ntp["statistics"], **{name: shards.statistics[name] for name in embodiments}}
    return {"run": identity, "world_size": world_size, "device": str(device), "mode": settings.mode,
            "km_alpha": settings.km_alpha,
            "init": {"checkpoint": settings.init, "weights_sha256": identity["init_weights_sha256"],
                     "step": ntp.get("step")},
            "act_vae": {"checkpoint_sha256": ntp["act_vae"]["checkpoint_sha256"],
                        "checkpoint": settings.act_vae or ntp["act_vae"].get("checkpoint")},
            "num_queries": ntp["num_queries"], "codebook_size": ntp["codebook_size"],
            "action_token_first_id": ntp["action_token_first_id"],
            "stats_ids": {name: entry["id"] for name, entry in sorted(statistics.items())}, "statistics": statistics,
            "embodiments": {name: {"arm_mask": mask} for name, mask in embodiments.items()},
            "vl_layers": list(head.vl_layers), "flow_steps": settings.flow_steps}


def rf_targets(shards: ShardSet) -> common.Extras:
    """Samples → the head's targets: the normalised state ``rf_state [B, 14]`` (its embodiment's statistics from
    the shards, the inactive arm zeroed), the normalised chunk ``rf_actions [B, 32, 14]``, ``rf_arm_mask [B, 2]``."""
    stats = {name: norm_stats(shards.statistics, name, f"{shards.root} (manifest)") for name in robot_embodiments(shards)}

    def targets(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        masks = np.asarray([s[ARM_MASK] for s in samples], dtype=np.float64)
        states = np.stack([normalized_state(np.asarray(s[STATE], dtype=np.float64), stats[s[EMBODIMENT]], mask)
                           for s, mask in zip(samples, masks, strict=True)])
        actions = np.asarray([s[ACTIONS] for s in samples], dtype=np.float32).reshape(-1, CHUNK_STEPS, ACTION_DIM)
        return {"rf_state": torch.tensor(states, dtype=torch.float32), "rf_actions": torch.from_numpy(actions),
                "rf_arm_mask": torch.from_numpy(masks.astype(bool))}

    return targets


def flow_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of step ``step``'s flow times and noise on ``rank``: a function of (seed, step, rank) only."""
    return torch.Generator(device=device).manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))


def train_loop(
    settings: RFTrainSettings, rank: int = 0, world_size: int = 1, device: torch.device | None = None,
    report: common.Report | None = None, on_start: Callable[[int], None] | None = None,
    orphaned: Callable[[], bool] | None = None,
) -> dict[str, Any] | None:
    """Train (or resume) into ``settings.out``, as :func:`clap_data.training.ntp_train.train_loop` does (the same
    lock, callbacks and return value)."""
    with common.writer_lock(Path(settings.out), rank, world_size, "train rf"):
        return _train(settings, rank, world_size, device or torch.device("cpu"), report, on_start, orphaned)


def _models(settings: RFTrainSettings, device: torch.device) -> tuple[RFModel, Any, torch.nn.Module | None]:
    """The backbone (fp32 master weights) with a new head, seeded alike on every rank; its processor; the frozen
    reference when α > 0, copied on the device before anything trains (no second copy in host memory), then cast
    to bf16 on CUDA."""
    vlm, processor = load_vlm(settings.init, dtype=torch.float32)
    vlm.config.use_cache = False
    vlm.to(device)
    config = settings.head_config(vlm.config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        head = RFHead(config)
    reference = None
    if settings.km_alpha > 0:
        reference = frozen_reference(vlm)
        if device.type == "cuda":
            reference.to(torch.bfloat16)
    model = RFModel(vlm, head, insulated=settings.ki).to(device)
    if device.type == "cuda" and settings.gradient_checkpointing and not settings.ki:
        vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, processor, reference


def _summary(measured_kl: bool) -> Callable[[list[float], int], dict[str, Any]]:
    def summarise(sums: list[float], count: int) -> dict[str, Any]:
        """A window's mean total loss, flow-matching loss and KL (None where no reference measures it)."""
        loss, flow, kl = sums
        return {"loss": loss / count, "flow_loss": flow / count, "kl": kl / count if measured_kl else None}

    return summarise


def _train(settings: RFTrainSettings, rank: int, world_size: int, device: torch.device, report: common.Report | None,
           on_start: Callable[[int], None] | None, orphaned: Callable[[], bool] | None) -> dict[str, Any] | None:
    shards = ShardSet.open(Path(settings.shards))
    ntp = read_init(settings, shards)
    identity = settings.identity(shards, world_size)
    ckpt = Path(settings.out)
    begun = common.start_point(ckpt, identity, "CLAP-RF", settings.steps, rank, on_start)
    if begun is None:
        return None  # complete, and its export is up to date
    saved, step = begun
    model, processor, reference = _models(settings, device)
    groups = [{"params": list(model.head.parameters()), "lr": settings.learning_rate}]
    if not settings.ki:
        groups.append({"params": list(model.vlm.parameters()), "lr": settings.backbone_lr})
    optimizer, scheduler = common.adamw_warmup(groups, settings.warmup_steps, settings.weight_decay)
    last = common.restore_last(saved, model, optimizer, scheduler)
    del saved
    cuda = device.type == "cuda"
    # plain fine-tuning: the layers above the deepest vl_layer and the LM head get no gradient
    ddp = common.wrap_ddp(model, world_size, device, find_unused=settings.mode == "plain")
    model.train()
    meta = _checkpoint_meta(settings, shards, ntp, identity, model.head.config, world_size, device)

    def forward(inputs: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The post-training loss; the metrics: loss, flow-matching loss, KL (0 without a reference)."""
        labels = inputs.pop("labels")
        state, actions, arm_mask = (inputs.pop(key) for key in TARGETS)
        window = answer_window(labels) if reference is not None else 1
        generator = flow_generator(settings.seed, step, rank, device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            flow, logits = ddp(inputs, labels, state, actions, arm_mask, generator, window)
            kl = torch.zeros((), device=device)
            if reference is not None:
                with torch.no_grad():
                    reference_logits = reference(**inputs, logits_to_keep=window).logits
                kl = answer_kl(logits, reference_logits, labels[:, -window:])
        loss = km_loss(flow, kl, settings.km_alpha)
        return loss, torch.stack([loss.detach(), flow.detach(), kl.detach()])

    def export(step: int, last: dict[str, Any] | None) -> None:
        export_rf(ckpt, model.vlm, processor, model.head, {**meta, "step": step, "last": last})

    loop = common.Loop(model, optimizer, scheduler, forward, _summary(reference is not None), export, ckpt, identity)
    return common.train_from(loop, settings, shards, processor, step, last, rank, world_size, device, report,
                             orphaned, robot_only=True, extras=rf_targets(shards))

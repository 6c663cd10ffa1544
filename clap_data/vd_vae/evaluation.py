"""``eval vd-vae``: how well the VD-VAE's pseudo tokens agree with the Act-VAE on held-out robot frame pairs.

Pairs ``(o_t, o_{t+gap})`` of one camera (:mod:`clap_data.vd_vae.frame_pairs`; padded pairs skipped) whose chunk
start ``t`` is on the held-out side of the shared split (:class:`clap_data.splits.Holdout`; ``None``: every pair).
For each pair:

* **agreement**: the VD-VAE's pseudo tokens against the Act-VAE's tokens of the ground-truth chunk at ``t`` (the
  dataset's ``action_tokens`` when they come from the same Act-VAE and statistics, else computed here), exact
  code match per slot (``2·Nq`` slots, left arm's then right's) over the arms active at ``t``; overall and per slot;
* **decoded actions**: pseudo tokens decoded by the Act-VAE decoder (:func:`clap_data.act_vae.decoding.detokenize`)
  against ``action[t : t+32]``, per-DOF MSE in robot units, beside the Act-VAE's own tokens decoded the same way;
* **constant-code baseline**: the most frequent Act-VAE code per slot on the evaluated pairs (ties: the smallest
  code), its exact-match rate; a model that does not beat it has learnt nothing of the action from the pixels.

* **robustness** (the paper's Table II, as token agreement): the share of codes, over active slots, left
  unchanged when the same pair is shown under each appearance change of
  :mod:`clap_data.vd_vae.perturbations` (brightness/contrast, grayscale, noise) and, given a dataset of the same
  motions on another background (``--background-swap DS=OTHER``, episodes matched by ``source/episode_id``),
  with that dataset's frames. Robustness alone proves nothing — the constant code is perfectly robust — so it
  is read beside the agreement.

Several checkpoints (``--compare``) are scored on the same pairs; they must share the Act-VAE's codebook.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from numpy.typing import NDArray

from clap_data.act_vae.checkpoint import load_act_vae, read_training_meta
from clap_data.act_vae.decoding import detokenize
from clap_data.act_vae.training import pick_device
from clap_data.actions import HUMAN, NormStats, chunk_commands, episode_chunks, model_chunks
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.lerobot_v3.reader import iter_episode_arrays
from clap_data.locking import dataset_lock
from clap_data.models import VDVAE, ActVAE, load_model
from clap_data.models.backbone import FrozenBackbone, load_backbone
from clap_data.norm_stats import load_norm_stats
from clap_data.schemas import ACTION_TOKENS, POSE14_NAMES
from clap_data.splits import Holdout, episode_keys
from clap_data.vd_vae.frame_pairs import GAP, EpisodeVideo, episode_videos, iter_frame_pairs
from clap_data.vd_vae.perturbations import BACKGROUND_SWAP, PERTURBATIONS

PAIR_BATCH = 16  # pairs (32 frames) per backbone call
VD_VAE_HINT = "train one with clap-data train vd-vae"


@dataclass
class VDModelScore:
    """One VD-VAE checkpoint's numbers on the evaluated pairs."""

    ckpt: str
    sha256: str
    exact_match: float | None  # matching codes / active slots
    per_slot_match: list[float | None]  # 2·Nq, left arm's slots then right's; None: that arm never active
    decoded_mse: dict[str, float | None]  # per DOF, robot units, active arms only
    decoded_mse_mean: float | None
    beats_constant: bool | None
    robustness: dict[str, float | None]  # appearance change → share of active codes unchanged


@dataclass
class VDEvalReport:
    act_vae_sha256: str
    num_queries: int
    codebook_size: int
    holdout: dict[str, Any] | None  # None: every pair was scored
    pairs: int
    pairs_per_dataset: dict[str, int]
    token_source: dict[str, str]  # dataset → "stored" (its action_tokens) or "computed"
    cameras: dict[str, str]
    models: list[VDModelScore]
    constant_codes: list[int | None]  # the most frequent Act-VAE code per slot
    constant_match: float | None
    constant_per_slot: list[float | None]
    act_vae_decoded_mse: dict[str, float | None]  # the Act-VAE's own tokens decoded: its reconstruction
    act_vae_decoded_mse_mean: float | None
    background_swaps: dict[str, str]  # dataset → the dataset of the same motions on another background

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def vd_vae_split(ckpt: Path) -> Holdout | None:
    """The split the VD-VAE was trained with (its training.json ``run.holdout``); None when it records none."""
    recorded = read_training_meta(ckpt).get("run", {}).get("holdout")
    return None if recorded is None else Holdout(**recorded)


def held_out_pair_starts(holdout: Holdout | None, key: str, frames: int, gap: int) -> NDArray[np.int64]:
    """Frames ``t`` of held-out pairs: the chunk at ``t`` is held out (every ``t`` when ``holdout`` is None)
    and ``t + gap`` lies inside the episode."""
    starts = np.arange(frames, dtype=np.int64) if holdout is None else holdout.starts(key, frames, held_out=True)
    return starts[starts + gap < frames]


def _stored_tokens(root: Path, meta: DatasetMetadata, sha256: str, stats: NormStats) -> dict[int, np.ndarray] | None:
    """Episode → its stored ``action_tokens [N, 2·Nq]`` when they come from this Act-VAE and statistics."""
    identity = meta.token_identity(ACTION_TOKENS)
    if not identity or identity.get("checkpoint_sha256") != sha256 or identity.get("stats_id") != stats.stats_id:
        return None
    tokens: dict[int, list] = {}
    for path in sorted((root / "data").glob("chunk-*/file-*.parquet")):
        table = pq.read_table(path, columns=["episode_index", "frame_index", ACTION_TOKENS])
        for episode, frame, codes in zip(*(table.column(i).to_pylist() for i in range(3)), strict=True):
            tokens.setdefault(int(episode), []).append((int(frame), codes))
    return {e: np.asarray([c for _, c in sorted(rows)], dtype=np.int64) for e, rows in tokens.items()}


def _pair_frames(video: EpisodeVideo, starts: NDArray[np.int64], gap: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(t [b], uint8 frames [b, 2, H, W, 3])`` of the pairs at ``starts`` (in order), in batches."""
    wanted = set(starts.tolist())
    batch: list[np.ndarray] = []
    ts: list[int] = []
    for pair in iter_frame_pairs(video, gap):
        if pair.padded or pair.t not in wanted:
            continue
        batch.append(np.stack([pair.frame_t, pair.frame_gap]))
        ts.append(pair.t)
        if len(batch) == PAIR_BATCH:
            yield np.asarray(ts), np.stack(batch)
            batch, ts = [], []
    if batch:
        yield np.asarray(ts), np.stack(batch)


def _patches(backbone: FrozenBackbone, frames: np.ndarray) -> torch.Tensor:
    b = frames.shape[0]
    return backbone(frames.reshape(2 * b, *frames.shape[2:])).view(b, 2, backbone.num_patches, -1)


def _episode_codes(
    models: list[VDVAE], backbone: FrozenBackbone, video: EpisodeVideo, starts: NDArray[np.int64], gap: int,
    views: list[str], swap: EpisodeVideo | None,
) -> dict[str, list[np.ndarray]]:
    """View (``clean`` and each appearance change) → each model's pseudo tokens ``[len(starts), 2·Nq]``."""
    codes: dict[str, list[list[np.ndarray]]] = {view: [[] for _ in models] for view in views}
    swapped = _pair_frames(swap, starts, gap) if swap is not None else None
    for ts, frames in _pair_frames(video, starts, gap):
        for view in views:
            if view == "clean":
                shown = frames
            elif view == BACKGROUND_SWAP:
                shown = next(swapped)[1]
            else:
                shown = PERTURBATIONS[view](frames, ts)
            patches = _patches(backbone, shown)
            for i, model in enumerate(models):
                codes[view][i].append(model.pseudo_tokens(patches).long().cpu().numpy())
    return {view: [np.concatenate(c) if c else np.zeros((0, 0), np.int64) for c in per_model]
            for view, per_model in codes.items()}


def _source_episode_ids(meta: DatasetMetadata) -> list[tuple[int, str]]:
    table = meta.episodes(["episode_index", "source/episode_id"])
    return [(int(e), str(s)) for e, s in zip(*(table.column(i).to_pylist() for i in range(2)), strict=True)]


def _swap_videos(meta: DatasetMetadata, other: Path, camera: str, lengths: dict[int, int]) -> dict[int, EpisodeVideo]:
    """Episode index of ``meta``'s dataset → the video of the same source episode in ``other`` (the same
    motions on another background), checked to be as long."""
    other_meta = DatasetMetadata.load(other)
    videos = episode_videos(other_meta, camera)
    index_of = {source: episode for episode, source in _source_episode_ids(other_meta)}
    matched = {}
    for episode, source in _source_episode_ids(meta):
        if source not in index_of:
            raise ClapDataError(f"--background-swap: {other} has no episode {source!r} of {meta.root}: give a dataset "
                                "of the same motions (e.g. another variant of the rendered factory)")
        video = videos[index_of[source]]
        if video.length != lengths[episode]:
            raise ClapDataError(f"--background-swap: episode {source!r} has {video.length} frames in {other} and "
                                f"{lengths[episode]} in {meta.root}: not the same motion")
        matched[episode] = video
    return matched


class _DecodedErrors:
    """Running per-DOF squared errors of decoded chunks against the ground truth, active arms only."""

    def __init__(self) -> None:
        self.total = np.zeros(14)
        self.count = np.zeros(14, dtype=np.int64)

    def add(self, decoded: np.ndarray, truth: np.ndarray, arm_mask: np.ndarray) -> None:
        active = np.repeat(arm_mask != 0, 7, axis=-1)  # [B, 14]
        squared = ((decoded - truth) ** 2).sum(axis=1)  # [B, 14] summed over the 32 steps
        self.total += np.where(active, squared, 0.0).sum(axis=0)
        self.count += active.sum(axis=0) * decoded.shape[1]

    def per_dof(self) -> dict[str, float | None]:
        return {n: float(t / c) if c else None for n, t, c in zip(POSE14_NAMES, self.total, self.count, strict=True)}

    def mean(self) -> float | None:
        return float(self.total.sum() / self.count.sum()) if self.count.sum() else None


def _slot_active(arm_mask: np.ndarray, nq: int) -> np.ndarray:
    """``[B, 2]`` arm mask → ``[B, 2·Nq]`` which slots count."""
    return np.repeat(arm_mask != 0, nq, axis=1)


def match_rates(predicted: np.ndarray, target: np.ndarray, active: np.ndarray) -> tuple[float | None, list[float | None]]:
    """Exact-match rate over active slots, overall and per slot."""
    hits = (predicted == target) & active
    per_slot = [float(h / a) if a else None for h, a in zip(hits.sum(0), active.sum(0), strict=True)]
    return (float(hits.sum() / active.sum()) if active.sum() else None), per_slot


def constant_baseline(target: np.ndarray, active: np.ndarray, codebook_size: int) -> tuple[list[int | None], float | None, list[float | None]]:
    """The most frequent code per slot (over active slots; ties: the smallest) and its exact-match rates."""
    codes: list[int | None] = []
    for slot in range(target.shape[1]):
        counts = np.bincount(target[active[:, slot], slot], minlength=codebook_size)
        codes.append(int(counts.argmax()) if counts.sum() else None)
    constant = np.array([-1 if c is None else c for c in codes])[None, :].repeat(len(target), axis=0)
    overall, per_slot = match_rates(constant, target, active)
    return codes, overall, per_slot


def _load_vd_vae(ckpt: Path, act_sha: str, device: str) -> tuple[VDVAE, str]:
    model, sha = load_model(VDVAE, ckpt, device, kind="a VD-VAE", hint=VD_VAE_HINT)
    if model.config.act_vae_sha256 != act_sha:
        raise ClapDataError(f"{ckpt} was trained on the codebook of Act-VAE {model.config.act_vae_sha256[:16]}…, not "
                            f"the given one ({act_sha[:16]}…): its codes mean nothing to that Act-VAE")
    return model, sha


def _check_backbone(ckpt: Path, model: VDVAE, backbone: FrozenBackbone) -> None:
    if (model.config.num_patches, model.config.feature_dim) != (backbone.num_patches, backbone.hidden_size):
        raise ClapDataError(f"{ckpt} takes {model.config.num_patches} patches of {model.config.feature_dim} features; "
                            f"the backbone gives {backbone.num_patches} of {backbone.hidden_size}: pass its own --backbone")
    trained = read_training_meta(ckpt).get("run", {}).get("backbone", {}).get("weights_sha256")
    if trained and trained != backbone.identity().get("weights_sha256"):
        raise ClapDataError(f"{ckpt} was trained on another backbone (weights {trained[:16]}…): pass its own --backbone")


class _Unchanged:
    """Running count, per model and appearance change, of active codes equal to those of the clean pair."""

    def __init__(self, views: list[str], models: int) -> None:
        self.same = {view: np.zeros(models, dtype=np.int64) for view in views}
        self.active = {view: 0 for view in views}

    def add(self, view: str, clean: list[np.ndarray], changed: list[np.ndarray], active: np.ndarray) -> None:
        for i, (a, b) in enumerate(zip(clean, changed, strict=True)):
            self.same[view][i] += int(((a == b) & active).sum())
        self.active[view] += int(active.sum())

    def rates(self, model: int) -> dict[str, float | None]:
        return {view: float(self.same[view][model] / self.active[view]) if self.active[view] else None
                for view in self.same}


def evaluate_vd_vae(
    ckpts: list[Path],
    backbone_path: Path,
    act_vae_ckpt: Path,
    cameras: dict[Path, str],
    holdout: Holdout | None,
    device: str = "auto",
    gap: int = GAP,
    robustness: bool = True,
    background_swaps: dict[Path, Path] | None = None,
) -> VDEvalReport:
    """Score each VD-VAE of ``ckpts`` (the first is the main one) on the held-out pairs of ``cameras`` (each
    robot dataset and the camera to pair); with ``robustness``, under each appearance change too, and against
    the same motions on another background for the datasets of ``background_swaps``. See the module docstring."""
    if not ckpts:
        raise ClapDataError("give a VD-VAE checkpoint (--ckpt)")
    swaps = {Path(k): Path(v) for k, v in (background_swaps or {}).items()}
    unknown = [str(k) for k in swaps if k not in {Path(r) for r in cameras}]
    if unknown:
        raise ClapDataError(f"--background-swap names {', '.join(unknown)}, which is not among the evaluated datasets")
    device = str(pick_device(device))
    act_vae, act_sha = load_act_vae(act_vae_ckpt, device)
    stats_kind = read_training_meta(act_vae_ckpt).get("run", {}).get("stats", "openclap")
    backbone = load_backbone(backbone_path).to(device)
    models = []
    for ckpt in ckpts:
        model, sha = _load_vd_vae(ckpt, act_sha, device)
        _check_backbone(ckpt, model, backbone)
        models.append((ckpt, model, sha))
    nq = act_vae.config.num_queries
    changes = list(PERTURBATIONS) if robustness else []
    unchanged = _Unchanged(changes + ([BACKGROUND_SWAP] if swaps else []), len(models))
    pseudo: list[list[np.ndarray]] = [[] for _ in models]
    targets: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    decoded_errors = [_DecodedErrors() for _ in models]
    own_errors = _DecodedErrors()
    per_dataset: dict[str, int] = {}
    sources: dict[str, str] = {}
    for root, camera in cameras.items():
        root = Path(root)
        with ExitStack() as locks:
            for locked in [root] + ([swaps[root]] if root in swaps else []):
                locks.enter_context(dataset_lock(locked, exclusive=False, purpose="eval vd-vae"))
            meta = DatasetMetadata.load(root)
            if meta.robot_type == HUMAN:
                raise ClapDataError(f"{root} is human video: eval vd-vae scores robot datasets (it needs actions)")
            videos = episode_videos(meta, camera)
            swap_videos = (_swap_videos(meta, swaps[root], camera, meta.episode_lengths()) if root in swaps else {})
            views = ["clean"] + changes + ([BACKGROUND_SWAP] if swap_videos else [])
            stats = load_norm_stats(root, stats_kind)
            keys = episode_keys(meta)
            stored = _stored_tokens(root, meta, act_sha, stats)
            sources[str(root)] = "computed" if stored is None else "stored"
            count = 0
            for arrays in iter_episode_arrays(root):
                episode = int(arrays.episode_index)
                starts = held_out_pair_starts(holdout, keys[episode], videos[episode].length, gap)
                if not len(starts):
                    continue
                mask = arrays.arm_mask[starts]
                if stored is not None:
                    target = stored[episode][starts]
                else:
                    chunks, _ = episode_chunks(arrays.state, arrays.action)
                    normalised = model_chunks(chunks[starts], arrays.arm_mask[starts], stats)
                    target = act_vae.tokenize_dual(torch.from_numpy(normalised), torch.from_numpy(mask)).long().cpu().numpy()
                truth = np.stack([chunk_commands(arrays.action, int(t))[0] for t in starts])
                state = arrays.state[starts]
                own_errors.add(_decode(act_vae, target, state, stats, mask), truth, mask)
                codes = _episode_codes([m for _, m, _ in models], backbone, videos[episode], starts, gap, views,
                                       swap_videos.get(episode))
                if any(len(c) != len(starts) for c in codes["clean"]):
                    raise ClapDataError(f"{root}: episode {episode} gave fewer frame pairs than the {len(starts)} "
                                        "expected")
                active = _slot_active(mask, nq)
                for view in views[1:]:
                    unchanged.add(view, codes["clean"], codes[view], active)
                for i, clean in enumerate(codes["clean"]):
                    pseudo[i].append(clean)
                    decoded_errors[i].add(_decode(act_vae, clean, state, stats, mask), truth, mask)
                targets.append(target)
                masks.append(mask)
                count += len(starts)
        per_dataset[str(root)] = count
    if not targets:
        raise ClapDataError("no held-out frame pairs to score (with very few episodes, try --holdout tail)")
    target = np.concatenate(targets)
    active = _slot_active(np.concatenate(masks), nq)
    size = act_vae.config.codebook_size
    constant_codes, constant_match, constant_per_slot = constant_baseline(target, active, size)
    scores = []
    for i, (ckpt, _, sha) in enumerate(models):
        overall, per_slot = match_rates(np.concatenate(pseudo[i]), target, active)
        beats = None if overall is None or constant_match is None else overall > constant_match
        scores.append(VDModelScore(str(ckpt), sha, overall, per_slot, decoded_errors[i].per_dof(),
                                   decoded_errors[i].mean(), beats, unchanged.rates(i)))
    return VDEvalReport(
        act_vae_sha256=act_sha, num_queries=nq, codebook_size=size,
        holdout=None if holdout is None else holdout.to_dict(), pairs=len(target), pairs_per_dataset=per_dataset,
        token_source=sources, cameras={str(Path(r)): c for r, c in cameras.items()}, models=scores,
        constant_codes=constant_codes, constant_match=constant_match, constant_per_slot=constant_per_slot,
        act_vae_decoded_mse=own_errors.per_dof(), act_vae_decoded_mse_mean=own_errors.mean(),
        background_swaps={str(k): str(v) for k, v in swaps.items()},
    )


def _decode(act_vae: ActVAE, tokens: np.ndarray, state: np.ndarray, stats: NormStats, mask: np.ndarray) -> np.ndarray:
    return detokenize(act_vae, tokens, state, stats, mask)

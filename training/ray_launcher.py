"""``clap-data train ntp`` and ``train rf``: a policy training loop on Ray Train workers (``TorchTrainer``, DDP), on
one machine or a cluster.

One launcher for every loop (:func:`launch`): a :class:`LoopSpec` names the loop function (CLAP-NTP's
:func:`clap_data.training.ntp_train.train_loop`, CLAP-RF's :func:`clap_data.training.rf_train.train_loop`; each
takes ``(settings, rank, world_size, device, report, on_start, orphaned)``), how ``--overwrite`` clears its folder
and which training samples it reads; :func:`train_ntp` and :func:`train_rf` are the two calls. The driver holds the
checkpoint folder's lock, handles ``--overwrite`` and a run that is already complete (from ``training.json`` alone:
no training state is loaded on the driver), then starts ``num_workers`` workers — gloo on CPUs, NCCL on GPUs, as
``TorchTrainer`` sets the process group up — each running the loop with its rank. Ray is embedded (started for
the command) unless ``address`` joins a cluster (:mod:`clap_data.ray_runtime`). On an embedded Ray on CPUs, each
worker gets an equal share of the CPUs (its torch threads follow); on a cluster, Ray Train's defaults (one CPU, or
one GPU, per worker).

Progress: rank 0 puts each log window's metrics on a Ray queue; the driver relays them to ``on_progress`` while
``fit`` runs in a thread. A worker on the driver's machine stops before its next step once the driver's process is
gone (``kill -9``: Ray's workers would otherwise go on for a while), and rank 0 holds the folder's writer lock, so
a rerun never trains beside the last steps of a killed run. Rank 0 writes the checkpoint itself, so on a cluster
``--out`` (and ``--shards``) must be a path every node sees (a shared filesystem); Ray Train's own storage holds
nothing but its run bookkeeping and goes into a temporary folder. A worker's :class:`ClapDataError` reaches the user
as that one sentence.
"""

from __future__ import annotations

import os
import queue as stdlib_queue
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from clap_data.act_vae.checkpoint import TRAINING_STATE_NAME, read_training_meta
from clap_data.errors import ClapDataError
from clap_data.locking import exclusive_lock
from clap_data.ray_runtime import ray_session
from clap_data.schemas.shards_v1 import TRAIN_SPLIT
from clap_data.training import ntp_train, rf_train
from clap_data.training.ntp_checkpoint import clear_ntp_checkpoint
from clap_data.training.ntp_data import ShardSet, check_batch_fits
from clap_data.training.rf_checkpoint import clear_rf_checkpoint

Progress = Callable[[dict[str, Any]], None]
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class LoopSpec:
    """A training loop the launcher runs: ``name`` (the Ray run's), the ``loop`` function, what ``--overwrite``
    does (``clear``) and whether it reads the robot samples alone (``robot_only``)."""

    name: str
    loop: Callable[..., dict[str, Any] | None]
    clear: Callable[[Path], None]
    robot_only: bool


NTP = LoopSpec("clap-ntp", ntp_train.train_loop, clear_ntp_checkpoint, robot_only=False)
RF = LoopSpec("clap-rf", rf_train.train_loop, clear_rf_checkpoint, robot_only=True)


@dataclass(frozen=True)
class TrainReport:
    ckpt: Path
    steps: int
    resumed_from: int  # the step of the training state the run started from
    already_complete: bool
    num_workers: int
    device: str
    seconds: float
    train_samples: int  # the samples the loop reads (robot samples alone for CLAP-RF)
    act_vae_sha256: str
    stats_ids: dict[str, str]
    last: dict[str, Any] | None


def _worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: the loop with this worker's rank and device; rank 0 talks to the queue."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    progress = config["progress"]
    host, pid = config["driver"]
    config["loop"](config["settings"], context.get_world_rank(), context.get_world_size(),
                   ray.train.torch.get_device(), report=lambda metrics: progress.put(("window", metrics)),
                   on_start=lambda step: progress.put(("start", step)),
                   orphaned=(lambda: not psutil.pid_exists(pid)) if host == socket.gethostname() else None)


def _scaling(device: str, num_workers: int, address: str | None) -> Any:
    import ray
    from ray.train import ScalingConfig

    gpus = ray.cluster_resources().get("GPU", 0)
    if device == "cuda" and gpus < num_workers:
        raise ClapDataError(f"--device cuda asks for {num_workers} GPU worker(s), but the Ray cluster has "
                            f"{gpus:g} GPUs")
    use_gpu = device == "cuda" or (device == "auto" and gpus >= num_workers)
    if use_gpu or address:
        return ScalingConfig(num_workers=num_workers, use_gpu=use_gpu)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // num_workers)
    return ScalingConfig(num_workers=num_workers, use_gpu=False, resources_per_worker={"CPU": cpus})


def _worker_error(exc: BaseException) -> ClapDataError | None:
    """The first :class:`ClapDataError` a worker raised, from Ray Train's wrapping of it."""
    seen: list[BaseException] = [exc, *getattr(exc, "worker_failures", {}).values()]
    while seen:
        error = seen.pop(0)
        if isinstance(error, ClapDataError):
            return error
        seen += [e for e in (getattr(error, "cause", None), error.__cause__) if isinstance(e, BaseException)]
    return None


def _fit(trainer: Any, progress: Any, on_progress: Progress | None) -> tuple[int, dict[str, Any] | None]:
    """``trainer.fit()`` in a thread; meanwhile the metrics rank 0 sends are relayed. Returns the step it started
    from and the last metrics."""
    outcome: stdlib_queue.Queue[BaseException | None] = stdlib_queue.Queue()

    def fit() -> None:
        try:
            trainer.fit()
            outcome.put(None)
        except BaseException as exc:  # noqa: BLE001  (re-raised on the caller's thread)
            outcome.put(exc)

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    started, last = 0, None
    while thread.is_alive() or not progress.empty():
        try:
            kind, value = progress.get(timeout=0.5)
        except Exception:  # noqa: BLE001  (ray.util.queue.Empty: nothing new)
            continue
        if kind == "start":
            started = value
        else:
            last = value
            if on_progress is not None:
                on_progress(last)
    error = outcome.get()
    if error is not None:
        raise _worker_error(error) or error
    return started, last


def train_ntp(
    settings: ntp_train.NTPTrainSettings, num_workers: int = 1, address: str | None = None, device: str = "auto",
    overwrite: bool = False, on_progress: Progress | None = None,
) -> TrainReport:
    """Train (or resume) CLAP-NTP into ``settings.out``; see the module docstring."""
    return launch(NTP, settings, num_workers, address, device, overwrite, on_progress)


def train_rf(
    settings: rf_train.RFTrainSettings, num_workers: int = 1, address: str | None = None, device: str = "auto",
    overwrite: bool = False, on_progress: Progress | None = None,
) -> TrainReport:
    """Train (or resume) CLAP-RF + Knowledge Matching into ``settings.out``; see the module docstring."""
    return launch(RF, settings, num_workers, address, device, overwrite, on_progress)


def launch(spec: LoopSpec, settings: Any, num_workers: int = 1, address: str | None = None, device: str = "auto",
           overwrite: bool = False, on_progress: Progress | None = None) -> TrainReport:
    """Run ``spec``'s loop with ``settings`` (its settings dataclass: ``out``, ``shards``, ``steps``,
    ``batch_size``, ``save_every``, ``log_every``, ``wrist_drop`` and ``identity(shards, world_size)``) on
    ``num_workers`` Ray Train workers; see the module docstring."""
    if min(settings.steps, settings.batch_size, settings.save_every, settings.log_every, num_workers) < 1:
        raise ClapDataError("steps, batch size, save and log intervals and the number of workers must all be at "
                            "least 1")
    if not 0.0 <= settings.wrist_drop <= 1.0:
        raise ClapDataError(f"the wrist-drop probability must lie in [0, 1], got {settings.wrist_drop}")
    if device not in DEVICES:
        raise ClapDataError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")
    shards = ShardSet.open(Path(settings.shards))
    ckpt = Path(settings.out)
    started = time.perf_counter()
    train_samples = shards.robot_count(TRAIN_SPLIT) if spec.robot_only else shards.count(TRAIN_SPLIT)
    check_batch_fits(shards, train_samples, settings.batch_size, num_workers,
                     "robot training samples" if spec.robot_only else "training samples")
    with exclusive_lock(ckpt / ".lock", ckpt):
        if overwrite:
            spec.clear(ckpt)
        meta = read_training_meta(ckpt)
        identity = settings.identity(shards, num_workers)
        complete = meta.get("step", 0) >= settings.steps and (ckpt / TRAINING_STATE_NAME).is_file()
        if meta.get("run") == identity and complete:
            return TrainReport(ckpt, meta["step"], meta["step"], True, num_workers, meta.get("device", ""), 0.0,
                               train_samples, shards.act_vae["checkpoint_sha256"], shards.stats_ids(), meta.get("last"))
        with ray_session(address, None):
            from ray.train import RunConfig
            from ray.train.torch import TorchTrainer
            from ray.util.queue import Queue

            progress = Queue(actor_options={"num_cpus": 0})
            scaling = _scaling(device, num_workers, address)
            with tempfile.TemporaryDirectory(prefix=f"{spec.name}-ray-train-") as storage:
                trainer = TorchTrainer(
                    _worker, train_loop_config={"loop": spec.loop, "settings": settings, "progress": progress,
                                                "driver": (socket.gethostname(), os.getpid())},
                    scaling_config=scaling, run_config=RunConfig(name=spec.name, storage_path=storage))
                resumed_from, last = _fit(trainer, progress, on_progress)
        done = read_training_meta(ckpt)
    return TrainReport(ckpt, done.get("step", 0), resumed_from, False, num_workers, done.get("device", ""),
                       time.perf_counter() - started, train_samples, shards.act_vae["checkpoint_sha256"],
                       shards.stats_ids(), last or done.get("last"))

"""Feature statistics in LeRobot's format: per episode (stored in the episodes metadata) and
aggregated over the dataset (``meta/stats.json``).

The dataset aggregate is exact for min, max, mean, std and count. Quantiles are the
frame-weighted mean of per-episode quantiles, as lerobot's own ``aggregate_stats`` does: exact
quantiles would need every frame in memory at once, and memory must stay bounded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Stats of one feature over one episode's frames; ``values`` is [N] or [N, D]."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    stats = {
        "min": data.min(axis=0),
        "max": data.max(axis=0),
        "mean": data.mean(axis=0),
        "std": data.std(axis=0),
        "count": np.array([len(data)], dtype=np.int64),
    }
    quantiles = np.quantile(data, list(QUANTILES.values()), axis=0)  # one sort for all of them
    for name, values in zip(QUANTILES, quantiles, strict=True):
        stats[name] = values
    return stats


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of ``[k, H, W, 3]`` uint8 frames, in [0, 1] and shaped ``[3, 1, 1]``,
    the form lerobot's normalisers expect for camera features.

    Computed from a 256-bin histogram per channel: exact (quantiles interpolate as
    ``np.quantile`` does) and an order of magnitude cheaper than sorting every pixel.
    """
    pixels = frames.reshape(-1, 3)
    count = len(pixels)
    levels = np.arange(256, dtype=np.float64)
    channels: dict[str, list[float]] = {name: [] for name in ("min", "max", "mean", "std", *QUANTILES)}
    for channel in range(3):
        hist = np.bincount(pixels[:, channel], minlength=256).astype(np.float64)
        cumulative = np.cumsum(hist)
        present = np.nonzero(hist)[0]
        mean = float(hist @ levels / count)
        channels["min"].append(float(present[0]))
        channels["max"].append(float(present[-1]))
        channels["mean"].append(mean)
        channels["std"].append(float(np.sqrt(max(hist @ (levels - mean) ** 2 / count, 0.0))))
        for name, q in QUANTILES.items():
            position = q * (count - 1)
            below, above = np.searchsorted(cumulative, [np.floor(position), np.ceil(position)], side="right")
            channels[name].append(float(below + (position - np.floor(position)) * (above - below)))
    stats = {name: (np.array(values) / 255.0).reshape(3, 1, 1) for name, values in channels.items()}
    stats["count"] = np.array([len(frames)], dtype=np.int64)
    return stats


class StatsAggregator:
    """Running dataset statistics; holds O(features), never frames."""

    def __init__(self) -> None:
        self._count: dict[str, int] = {}
        self._sum: dict[str, np.ndarray] = {}
        self._sumsq: dict[str, np.ndarray] = {}
        self._min: dict[str, np.ndarray] = {}
        self._max: dict[str, np.ndarray] = {}
        self._quantile_sum: dict[str, dict[str, np.ndarray]] = {}

    def add(self, key: str, stats: dict[str, np.ndarray]) -> None:
        n = int(stats["count"][0])
        mean, std = stats["mean"], stats["std"]
        if key not in self._count:
            self._count[key] = 0
            self._sum[key] = np.zeros_like(mean)
            self._sumsq[key] = np.zeros_like(mean)
            self._min[key] = stats["min"].copy()
            self._max[key] = stats["max"].copy()
            self._quantile_sum[key] = {q: np.zeros_like(mean) for q in QUANTILES}
        self._count[key] += n
        self._sum[key] += mean * n
        self._sumsq[key] += (std**2 + mean**2) * n
        self._min[key] = np.minimum(self._min[key], stats["min"])
        self._max[key] = np.maximum(self._max[key], stats["max"])
        for q in QUANTILES:
            self._quantile_sum[key][q] += stats[q] * n

    def state(self) -> dict[str, Any]:
        """The running sums as JSON (values and dtype, so that a resumed sum adds exactly as before)."""
        def arrays(values: dict[str, np.ndarray]) -> dict[str, Any]:
            return {key: {"dtype": str(a.dtype), "values": a.tolist()} for key, a in values.items()}

        return {"count": dict(self._count), "sum": arrays(self._sum), "sumsq": arrays(self._sumsq),
                "min": arrays(self._min), "max": arrays(self._max),
                "quantile_sum": {key: arrays(q) for key, q in self._quantile_sum.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StatsAggregator:
        def arrays(values: dict[str, Any]) -> dict[str, np.ndarray]:
            return {key: np.asarray(a["values"], dtype=a["dtype"]) for key, a in values.items()}

        aggregator = cls()
        aggregator._count = {key: int(n) for key, n in state["count"].items()}
        aggregator._sum, aggregator._sumsq = arrays(state["sum"]), arrays(state["sumsq"])
        aggregator._min, aggregator._max = arrays(state["min"]), arrays(state["max"])
        aggregator._quantile_sum = {key: arrays(q) for key, q in state["quantile_sum"].items()}
        return aggregator

    def result(self) -> dict[str, dict[str, list]]:
        out: dict[str, dict[str, list]] = {}
        for key, n in self._count.items():
            mean = self._sum[key] / n
            variance = np.maximum(self._sumsq[key] / n - mean**2, 0.0)
            entry = {
                "min": self._min[key].tolist(),
                "max": self._max[key].tolist(),
                "mean": mean.tolist(),
                "std": np.sqrt(variance).tolist(),
                "count": [n],
            }
            for q in QUANTILES:
                entry[q] = (self._quantile_sum[key][q] / n).tolist()
            out[key] = entry
        return out

"""Feature statistics: image stats from histograms equal the sort-based definition exactly."""

from __future__ import annotations

import numpy as np
import pytest

from clap_data.lerobot_v3.stats import QUANTILES, StatsAggregator, feature_stats, image_stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_stats_equal_numpy_on_every_pixel(seed):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(5, 17, 23, 3), dtype=np.uint8)
    frames[..., 1] = np.clip(frames[..., 1], 40, 90)  # a channel with a narrow range
    stats = image_stats(frames)
    pixels = frames.reshape(-1, 3).astype(np.float64) / 255.0
    np.testing.assert_allclose(stats["mean"].ravel(), pixels.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(stats["std"].ravel(), pixels.std(axis=0), atol=1e-12)
    np.testing.assert_allclose(stats["min"].ravel(), pixels.min(axis=0))
    np.testing.assert_allclose(stats["max"].ravel(), pixels.max(axis=0))
    for name, q in QUANTILES.items():
        np.testing.assert_allclose(stats[name].ravel(), np.quantile(pixels, q, axis=0), atol=1e-12)
    assert stats["mean"].shape == (3, 1, 1) and stats["count"].tolist() == [5]


def test_aggregate_is_exact_for_mean_std_min_max():
    rng = np.random.default_rng(4)
    episodes = [rng.normal(size=(n, 3)) for n in (10, 25, 7)]
    total = StatsAggregator()
    for values in episodes:
        total.add("x", feature_stats(values))
    everything = np.vstack(episodes)
    result = total.result()["x"]
    np.testing.assert_allclose(result["mean"], everything.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(result["std"], everything.std(axis=0), atol=1e-12)
    np.testing.assert_allclose(result["min"], everything.min(axis=0))
    assert result["count"] == [42]

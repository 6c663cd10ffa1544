"""The appearance changes ``eval vd-vae`` shows a frame pair under, to measure whether its codes ignore them.

The paper's robustness claim (Table II) is that the latent actions follow the motion, not the look of the
scene. Each perturbation here changes the look of **both** frames of a pair the same way — the motion between
them is untouched — so a VD-VAE that reads motion should give the same codes. They are fixed and
deterministic (the noise of a pair is seeded by its frame ``t``), so two checkpoints are scored on the very same
pixels, and set at or past the edge of the training augmentation (METHOD.md §4: brightness/contrast ×(1±0.2),
grayscale, σ = 0.02), where a model has to generalise rather than recall.

A fourth change, the background, cannot be made from pixels alone: it needs the same motion rendered on
another background (:mod:`clap_data.factories.rendered` writes such variants), so the evaluation pairs it
from a second dataset (``--background-swap``) rather than from here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from clap_data.models.vd_vae import GRAY_WEIGHTS

BRIGHTNESS = 0.75  # gain: a quarter darker, past the training range's 0.8
CONTRAST = 1.25  # about the pair's mean luma
NOISE_STD = 0.03 * 255  # Gaussian, per pixel and frame; training saw 0.02
BACKGROUND_SWAP = "background_swap"


def _luma(pixels: np.ndarray) -> np.ndarray:
    return pixels @ np.asarray(GRAY_WEIGHTS, dtype=np.float32)


def brightness_contrast(pairs: np.ndarray, starts: np.ndarray) -> np.ndarray:  # noqa: ARG001 (no randomness)
    """Darker and more contrasted: one gain, then one contrast about the pair's mean luma, for both frames."""
    x = np.clip(pairs.astype(np.float32) * BRIGHTNESS, 0, 255)
    pivot = _luma(x).mean(axis=(1, 2, 3), keepdims=True)[..., None]
    return np.clip(pivot + CONTRAST * (x - pivot), 0, 255).round().astype(np.uint8)


def grayscale(pairs: np.ndarray, starts: np.ndarray) -> np.ndarray:  # noqa: ARG001 (no randomness)
    """ITU-R 601 luma in all three channels, the conversion the training augmentation uses."""
    gray = _luma(pairs.astype(np.float32)).round().astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def noise(pairs: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Gaussian noise, independent per pixel and frame; pair ``i``'s drawn from a generator seeded by ``starts[i]``
    (its ``t``), so a pair gets the same noise however the pairs are batched."""
    drawn = np.stack([np.random.default_rng(int(t)).normal(0.0, NOISE_STD, size=pairs.shape[1:]) for t in starts])
    return np.clip(pairs.astype(np.float32) + drawn.astype(np.float32), 0, 255).round().astype(np.uint8)


# name → f(uint8 pairs [B, 2, H, W, 3], their frames t [B]) → the pairs changed
PERTURBATIONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "brightness_contrast": brightness_contrast,
    "grayscale": grayscale,
    "noise": noise,
}

"""Raw maps to the maps the measures read, and the two baseline maps every method is compared with.

A raw map (feature resolution, or input resolution for the gradient methods) becomes one 2-D map:
an RGB gradient map [3, H, W] is first reduced to max_c |g_c| (as ``saliency`` is); then ReLU, min-max
normalisation (m - min) / (max - min + 1e-7) and bilinear upsampling with half-pixel centres, exactly
the server's heatmap steps (``server.heatmaps``). Twice: to the model input (H x W, for the
confidence and deletion/insertion measures, which perturb the input) and to the original image
(for the box measures, whose boxes are in original pixels; areas the centre crop cut off are 0).
numpy only, through the server's own torch-free helpers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from server.heatmaps import normalize, upsample
from server.imaging import Geometry

RANDOM = "random"
GAUSSIAN = "center_gaussian"
BASELINES: tuple[str, ...] = (RANDOM, GAUSSIAN)
#: The centred Gaussian's standard deviation as a fraction of each side of the model input.
GAUSSIAN_SIGMA = 0.25


@dataclass(frozen=True)
class PreparedMap:
    #: The 2-D map before normalisation, at its own resolution (kept for the report's pictures).
    raw: np.ndarray
    #: Normalised, at the model input size [H, W].
    at_input: np.ndarray
    #: Normalised, at the original image size [height, width].
    at_image: np.ndarray


def to_2d(raw: np.ndarray) -> np.ndarray:
    """[h, w] as it is; an RGB gradient map [3, h, w] as max over colours of |g|."""
    raw = np.asarray(raw, np.float32)
    if raw.ndim == 3:
        return np.abs(raw).max(axis=0)
    if raw.ndim != 2:
        raise ValueError(f"a map must be [h, w] or [3, h, w], not {list(raw.shape)}")
    return raw


def input_geometry(height: int, width: int) -> Geometry:
    """The model input seen as an image of its own: upsampling onto it is a plain resize."""
    return Geometry(height, width, 0.0, 0.0, float(height), float(width))


def prepare(raw: np.ndarray, input_size: tuple[int, int], geometry: Geometry) -> PreparedMap:
    flat = to_2d(raw)
    normalised = normalize(flat)
    return PreparedMap(flat, upsample(normalised, input_geometry(*input_size)), upsample(normalised, geometry))


def random_map(feature_size: tuple[int, int], seed: int, index: int) -> np.ndarray:
    """Uniform noise at the target layer's resolution (h x w, as a CAM), seeded per image."""
    return np.random.default_rng([seed, index]).random(feature_size, dtype=np.float32)


def gaussian_map(input_size: tuple[int, int], sigma: float = GAUSSIAN_SIGMA) -> np.ndarray:
    """A Gaussian centred on the model input, sigma = ``sigma`` x each side: the centre bias alone."""
    height, width = input_size
    y = (np.arange(height) + 0.5 - height / 2) / (sigma * height)
    x = (np.arange(width) + 0.5 - width / 2) / (sigma * width)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2)).astype(np.float32)


def baseline_maps(feature_size: tuple[int, int], input_size: tuple[int, int], seed: int,
                  index: int) -> dict[str, np.ndarray]:
    return {RANDOM: random_map(feature_size, seed, index), GAUSSIAN: gaussian_map(input_size)}

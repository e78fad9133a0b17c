"""Put a detector's map on its score's scale, for detectors whose map is not the map the score is the max of.

The bundle normalises score and map with one offset and image threshold, so a typical good pixel should read about
as a good image's score does. PaDiM's score is its map's maximum, so that holds by construction; a detector whose
score comes from elsewhere (a whole-image distance, a k-NN over embeddings) gets an affine map' = a * map + b fitted
on the training images: the median and the maximum of the per-image map peaks land on the median and the maximum of
the scores. It only rescales: the order of pixels, within an image and across images, is unchanged.
"""

from __future__ import annotations

import numpy as np


def fit_map_scale(scores: np.ndarray, maps: np.ndarray) -> tuple[float, float]:
    """(a, b) with a > 0 such that a * peak + b matches the scores' median and maximum (peak = per-image map max)."""
    peaks = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1).max(axis=1)
    scores = np.asarray(scores, dtype=np.float64)
    p_med, p_max = float(np.median(peaks)), float(np.max(peaks))
    s_med, s_max = float(np.median(scores)), float(np.max(scores))
    if p_max - p_med > 1e-12 and s_max - s_med > 1e-12:
        a = (s_max - s_med) / (p_max - p_med)
    else:  # no spread on one side (e.g. a single image): keep the unit, shift only
        a = 1.0
    return a, s_med - a * p_med

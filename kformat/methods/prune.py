"""Magnitude pruning: the smallest weights become exact zeros that every quantizer keeps."""

from __future__ import annotations

import numpy as np


def prune_mask(values: np.ndarray, fraction: float | None, threshold: float | None) -> np.ndarray | None:
    """Boolean mask of the weights to zero, or None when nothing is pruned.

    A fraction f zeroes the f * n weights of smallest magnitude (ties at the cut are kept);
    a threshold t zeroes every weight with |w| <= t.
    """
    if threshold is not None:
        return np.abs(values) <= threshold
    if not fraction:
        return None
    magnitudes = np.abs(values).reshape(-1)
    kth = int(fraction * magnitudes.size)
    if kth == 0:
        return None
    cut = np.partition(magnitudes, kth)[kth]
    return np.abs(values) < cut

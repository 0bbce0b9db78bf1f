"""Importance files: how much each weight matters, measured on calibration data
(kformat.torch.calibrate), so k-means fits the weights that move the output most.

An importance file is an .npz (read without pickle) of float32 arrays keyed by tensor name
(the names of `state_dict()`): for a tensor whose 2-D view is (rows, cols), an array of shape
(cols,) weighs every column (mean squared input activation per input channel of a Linear or
convolution), (rows, 1) every row (how often an embedding row is looked up; the channel of a
depthwise convolution), or (rows, cols) every weight. k-means then minimises
sum(importance * (w - w')^2) instead of the plain squared error.

The file may also hold each tensor's *sensitivity* (arrays SENSITIVITY_NAMES, SENSITIVITY):
how much the model's output moves per unit of that tensor's relative (importance-weighted)
error, measured by calibrate by perturbing one layer at a time. Bit allocation then
minimises the sum over tensors of sensitivity x relative error, the model's output error to
first order, instead of weighing every layer alike.

And (calibrate records them by default, within a budget) a Linear or convolution weight's
input covariance E[x x^T] (an array named COVARIANCE_PREFIX + the tensor's name, cols x
cols), from which the final pack rounds codes with error feedback (kformat.packing.feedback).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from ..errors import InputError, NotFound


SENSITIVITY_NAMES = "__sensitivity_names__"
SENSITIVITY = "__sensitivity__"


COVARIANCE_PREFIX = "__covariance__/"  # over the inputs a weight's columns see (x W^T)
ROW_COVARIANCE_PREFIX = "__row_covariance__/"  # over its rows' (x W: GPT-2's Conv1D)

SENSITIVITY_FLOOR = 0.1  # of the median sensitivity


class Importance:
    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        sha256: str = "",
        source: str = "",
        sensitivities: dict[str, float] | None = None,
        covariances: dict[tuple[str, bool], np.ndarray] | None = None,
    ):
        self.arrays = arrays
        self.covariances = dict(covariances or {})
        self.sha256 = sha256
        self.source = source
        self.sensitivities = dict(sensitivities or {})
        self.used: set[str] = set()

    @classmethod
    def load(cls, path: str | Path) -> "Importance":
        path = Path(path)
        if not path.is_file():
            raise NotFound(f"{path}: no such importance file")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            with np.load(path, allow_pickle=False) as npz:
                names = [str(n) for n in npz[SENSITIVITY_NAMES]] if SENSITIVITY_NAMES in npz.files else []
                values = np.asarray(npz[SENSITIVITY], dtype=np.float64) if names else np.zeros(0)
                special = {SENSITIVITY_NAMES, SENSITIVITY}
                arrays = {n: np.asarray(npz[n], dtype=np.float32) for n in npz.files if n not in special}
            covariances = {
                (n.removeprefix(prefix), prefix == ROW_COVARIANCE_PREFIX): arrays.pop(n)
                for n in list(arrays)
                for prefix in (COVARIANCE_PREFIX, ROW_COVARIANCE_PREFIX)
                if n.startswith(prefix)
            }
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
            raise InputError(f"{path}: not an importance file (.npz of float arrays): {exc}") from None
        if len(names) != values.size or not np.all(np.isfinite(values)) or np.any(values < 0):
            raise InputError(f"{path}: sensitivities must be one finite value >= 0 per name")
        for name, array in arrays.items():
            if array.size and (not np.all(np.isfinite(array)) or array.min() < 0):
                raise InputError(f"{path}: importance of {name!r} must be finite and >= 0")
        for (name, _), array in covariances.items():
            if array.ndim != 2 or array.shape[0] != array.shape[1] or not np.all(np.isfinite(array)):
                raise InputError(
                    f"{path}: covariance of {name!r} must be a finite square matrix,"
                    f" got shape {list(array.shape)}"
                )
        return cls(arrays, digest, str(path), dict(zip(names, values.tolist())), covariances)

    def weights(self, name: str, view: tuple[int, int]) -> np.ndarray | None:
        """`name`'s importance as an array broadcastable to its (rows, cols) view, normalised
        to mean 1, with a floor so that no weight is ignored entirely; None when absent."""
        array = self.arrays.get(name)
        if array is None:
            return None
        rows, cols = view
        if array.shape == (cols,):
            array = array[None, :]
        elif array.shape == (rows,):
            array = array[:, None]
        elif array.shape not in ((rows, 1), (1, cols), (rows, cols)):
            raise InputError(
                f"{self.source}: importance of {name!r} has shape {list(array.shape)}; tensor {name!r}"
                f" has the 2-D view {rows}x{cols} (expected ({cols},), ({rows}, 1) or ({rows}, {cols}))"
            )
        mean = float(array.mean()) if array.size else 0.0
        if mean <= 0:
            return None
        self.used.add(name)
        floor = 1e-3  # a weight never seen still counts a little: its error is not free
        return (array / mean + floor).astype(np.float32)

    def covariance(self, name: str, view: tuple[int, int]) -> tuple[np.ndarray | None, bool]:
        """`name`'s input covariance and whether it is across rows (rows x rows of its 2-D
        view; else cols x cols), or (None, False) when absent."""
        for across_rows in (False, True):
            array = self.covariances.get((name, across_rows))
            if array is None:
                continue
            size = view[0] if across_rows else view[1]
            if array.shape != (size, size):
                raise InputError(
                    f"{self.source}: covariance of {name!r} has shape {list(array.shape)}; tensor"
                    f" {name!r} has the 2-D view {view[0]}x{view[1]} (expected ({size}, {size}))"
                )
            self.used.add(name)
            return array, across_rows
        return None, False

    def sensitivity(self, name: str) -> float:
        """How much `name`'s relative error weighs in the model's output error: measured, or
        the median of the measured ones for a tensor calibration did not perturb; 1 without.

        Never below SENSITIVITY_FLOOR x the median: sensitivities are measured with small
        noise, and a layer that shrugs that off still breaks at 1-2 bits (a depthwise CNN's
        last pointwise layer measured 1/40 of the median, and allocation gave it 1 bit)."""
        if not self.sensitivities:
            return 1.0
        median = float(np.median(list(self.sensitivities.values())))
        return max(self.sensitivities.get(name, median), SENSITIVITY_FLOOR * median)

    def record(self) -> dict[str, str]:
        """What the manifest's metadata says about the importance used."""
        return {
            "kformat.importance": f"sha256:{self.sha256}",
            "kformat.importance.tensors": str(len(self.used)),
        }

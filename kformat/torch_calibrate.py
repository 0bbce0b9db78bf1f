"""Importance from calibration data: run the user's model on sample inputs and record, for
every Linear, convolution and Embedding weight, how much each of its inputs matters.

* Linear (out, in): the mean squared input activation of each input feature, shape (in,):
  a weight's error times its input's RMS is what reaches the output.
* Convolution (out, in/groups, *k): the mean squared activation of each input channel over
  batch and positions, repeated over the kernel taps, shape (in/groups * prod(k),); for a
  grouped (depthwise) convolution each output row sees its own input channels, so the
  importance is per row and tap, shape (out, in/groups * prod(k)).
* Embedding (rows, dim): how often each row is looked up, shape (rows, 1).
* GPT-2's Conv1D (transformers; x @ W with W (in, out)): like a Linear, but its inputs are
  the weight's rows, shape (in, 1), and its covariance is across rows.
* By default, a Linear's input covariance E[x x^T] too, shape (in, in), and an ungrouped
  convolution's, over its input patches (in * prod(k), in the order of the weight's 2-D
  view's columns), for inputs of at most MAX_COVARIANCE_INPUTS features (a running sum of
  x^T x per batch), the smallest layers first until COVARIANCE_BUDGET floats are spent.
  Grouped (depthwise) convolutions get none: their rows see different inputs.

Then, by default, each such weight's *sensitivity*: the first SENSITIVITY_BATCHES batches are
run again with that one weight perturbed by Gaussian noise of a known importance-weighted
relative power, and the output's relative distortion divided by that power is how much a unit
of the weight's relative error moves the output (a first-order, per-layer model: bit
allocation minimises the sum of sensitivity x relative error).

kformat.torch owns the torch import and passes the module in; this file never imports
torch. Only running sums are kept (no activations), so calibrating holds the model, one
batch's activations, and the few inputs and outputs the sensitivities are measured on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError


MAX_COVARIANCE_INPUTS = 8192  # 256 MiB of float32 for the largest layer's matrix
# Covariances in one importance file, in floats (512 MiB of float32; twice that in float64
# while calibrating): all of MiniLM's (18.6M) and BERT-base's but for a few of its largest.
COVARIANCE_BUDGET = 1 << 27
PATCH_BYTES = 64 << 20  # a convolution's input patches are unfolded about this much at a time
PRODUCT_ROWS = 1 << 16  # samples per float32 product before it joins the float64 sum


def transposed_linear(module) -> bool:
    """A layer computing x @ W + b with W of shape (in, out): GPT-2's Conv1D (transformers),
    told by its class name and attributes so that transformers need not be imported."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and weight is not None
        and weight.dim() == 2
        and tuple(weight.shape) == (getattr(module, "nx", None), getattr(module, "nf", None))
    )


def _covariance_inputs(torch, module) -> float:
    """How many inputs a weight's columns (or a Conv1D's rows) see (inf where no covariance
    is recorded: grouped convolutions, Conv3d and string paddings, which unfold cannot take)."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features
    if transposed_linear(module):
        return module.nx
    if (
        isinstance(module, torch.nn.modules.conv._ConvNd)
        and module.groups == 1
        and len(module.kernel_size) in (1, 2)
        and not isinstance(module.padding, str)
    ):
        return module.in_channels * int(np.prod(module.kernel_size))
    return float("inf")


class _Accumulator:
    def __init__(self, torch, name: str, module, covariance: bool = False):
        """`covariance`: whether to record this layer's input covariance (where it can)."""
        self.torch = torch
        self.name = name
        self.module = module
        self.sums = None
        self.count = 0
        self.products = None  # sum of x^T x over `samples` inputs, with covariance
        self.samples = 0
        self.covariance = covariance  # as _with_covariance chose (where the layer can have one)

    def linear(self, _module, inputs) -> None:
        x = inputs[0].detach().float()
        x = x.reshape(-1, x.shape[-1])
        self._add(x.square().sum(0), x.shape[0])
        if self.covariance:
            self._multiply(x)

    def _multiply(self, x) -> None:
        """Add x^T x of (samples, features) inputs to the running products (float64 sums of
        float32 products over at most PRODUCT_ROWS samples each)."""
        for start in range(0, x.shape[0], PRODUCT_ROWS):
            piece = x[start : start + PRODUCT_ROWS].float()
            product = (piece.T @ piece).double().cpu()
            self.products = product if self.products is None else self.products + product
        self.samples += x.shape[0]

    def input_covariance(self) -> np.ndarray | None:
        if self.products is None or not self.covariance:
            return None
        return (self.products / max(1, self.samples)).numpy().astype(np.float32)

    def conv(self, module, inputs) -> None:
        x = inputs[0].detach().float()
        if x.dim() == len(module.kernel_size) + 1:  # unbatched (channels, ...): one sample
            x = x.unsqueeze(0)
        if self.covariance:
            self._patches(module, x)
        channels = x.shape[1]
        x = x.transpose(0, 1).reshape(channels, -1)
        self._add(x.square().sum(1), x.shape[1])

    def _patches(self, module, x) -> None:
        """x^T x of the convolution's input patches, as its weight's columns see them (Conv1d
        as a 2-D convolution of height 1); none for an input of any other shape."""
        if x.dim() != len(module.kernel_size) + 2:
            self.products, self.covariance = None, False
            return
        kernel, dilation, padding, stride = module.kernel_size, module.dilation, module.padding, module.stride
        if x.dim() == 3:
            x = x.unsqueeze(2)
            kernel, dilation, padding, stride = (1, *kernel), (1, *dilation), (0, *padding), (1, *stride)
        unfold = self.torch.nn.functional.unfold
        columns = x.shape[1] * int(np.prod(kernel))
        step = max(1, PATCH_BYTES // max(1, 4 * columns * x.shape[2] * x.shape[3]))  # images at once
        for start in range(0, x.shape[0], step):  # a 224x224 batch's patches unfolded whole: GBs
            images = x[start : start + step]
            patches = unfold(images, kernel, dilation=dilation, padding=padding, stride=stride)
            self._multiply(patches.transpose(1, 2).reshape(-1, columns))

    def embedding(self, module, inputs) -> None:
        ids = inputs[0].detach().reshape(-1).long()
        counts = self.torch.bincount(ids, minlength=module.num_embeddings).double()
        self._add(counts, 1)

    def _add(self, sums, count: int) -> None:
        sums = sums.double().cpu()
        self.sums = sums if self.sums is None else self.sums + sums
        self.count += count

    def importance(self) -> np.ndarray | None:
        if self.sums is None:
            return None
        m = self.module
        mean = (self.sums / max(1, self.count)).numpy().astype(np.float32)
        if isinstance(m, self.torch.nn.Embedding):
            return mean.reshape(-1, 1)
        if isinstance(m, self.torch.nn.Linear):
            return mean
        if transposed_linear(m):  # the weight's rows are its inputs
            return mean.reshape(-1, 1)
        taps = int(np.prod(m.kernel_size))
        per_group = m.in_channels // m.groups
        if m.groups == 1:
            return np.repeat(mean, taps)
        out_per_group = m.out_channels // m.groups
        rows = []
        for g in range(m.groups):  # output rows of group g see input channels of group g
            cols = np.repeat(mean[g * per_group : (g + 1) * per_group], taps)
            rows.append(np.broadcast_to(cols, (out_per_group, cols.size)))
        return np.concatenate(rows).astype(np.float32)


SENSITIVITY_BATCHES = 2
NOISE_POWER = 3e-3  # the perturbation: about the relative error of 4-5 bit codes


def _run(model, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _tensors(torch, value) -> list:
    """Every floating-point tensor of a model's output (tensors, tuples, dicts, ModelOutputs)."""
    if isinstance(value, torch.Tensor):
        return [value.detach().float()] if value.is_floating_point() else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(torch, item)]
    return []


def sensitivities(torch, model, batches: list, accumulators, found: dict, seed: int = 0) -> dict[str, float]:
    """Per weight: output relative distortion / the weight's importance-weighted relative noise."""
    from .packing.importance import Importance

    weights = Importance(found)
    with torch.no_grad():
        reference = [_tensors(torch, _run(model, b)) for b in batches]
        power = sum(float(t.square().sum()) for ts in reference for t in ts)
        if power <= 0:
            return {}
        generator = torch.Generator().manual_seed(seed)
        out = {}
        for acc in accumulators:
            w = acc.module.weight
            original = w.detach().clone()
            flat = original.float().reshape(original.shape[0], -1)
            rms = float(flat.square().mean().sqrt())
            if rms == 0 or not flat.numel():
                continue
            noise = torch.randn(flat.shape, generator=generator) * (rms * NOISE_POWER**0.5)
            imp = weights.weights(acc.name, tuple(flat.shape))
            imp = torch.ones(1) if imp is None else torch.from_numpy(np.ascontiguousarray(imp))
            relative = float((imp * noise.square()).sum() / ((imp * flat.square()).sum() or 1.0))
            try:
                w.add_(noise.reshape(original.shape).to(w.dtype))
                moved = sum(
                    float((a - b).square().sum())
                    for ref, batch in zip(reference, batches)
                    for a, b in zip(_tensors(torch, _run(model, batch)), ref)
                )
            finally:
                w.copy_(original)
            out[acc.name] = moved / power / relative if relative > 0 else 0.0
    return out


def _with_covariance(torch, modules: list, covariance: bool | None) -> list[bool]:
    """Which layers record their input covariance: none (False), every one that can (True),
    or (None) the smallest first while the matrices fit COVARIANCE_BUDGET floats."""
    inputs = [_covariance_inputs(torch, m) for m in modules]
    eligible = [n <= MAX_COVARIANCE_INPUTS for n in inputs]
    if covariance is not None:
        return [bool(covariance) and e for e in eligible]
    chosen, spent = [False] * len(modules), 0
    for i in sorted((i for i, e in enumerate(eligible) if e), key=lambda i: (inputs[i], i)):
        if spent + inputs[i] ** 2 > COVARIANCE_BUDGET:
            break
        chosen[i], spent = True, spent + inputs[i] ** 2
    return chosen


def calibrate(
    torch, model, batches, path: str | Path, sensitivity: bool = True, covariance: bool | None = None
) -> dict[str, np.ndarray]:
    """Run `model` on every batch (a dict as model(**batch), a tuple or list as
    model(*batch), anything else as model(batch)) and write the importance of every Linear,
    Conv and Embedding weight to `path` (.npz keyed by state_dict names), with each weight's
    sensitivity unless `sensitivity` is False, and input covariances (`covariance`: None
    within COVARIANCE_BUDGET, True all, False none); returns the importance arrays."""
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Embedding)
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if (isinstance(module, kinds) or transposed_linear(module))
        and getattr(module, "weight", None) is not None
    ]
    recorded = _with_covariance(torch, [module for _, module in layers], covariance)
    accumulators, hooks = [], []
    for (name, module), with_covariance in zip(layers, recorded):
        acc = _Accumulator(torch, f"{name}.weight" if name else "weight", module, with_covariance)
        if isinstance(module, torch.nn.Linear) or transposed_linear(module):
            hook = acc.linear
        elif isinstance(module, torch.nn.Embedding):
            hook = acc.embedding
        else:
            hook = acc.conv
        accumulators.append(acc)
        hooks.append(module.register_forward_pre_hook(hook))
    if not accumulators:
        raise InputError("calibrate: the model has no Linear, Conv or Embedding layers")
    seen = 0
    kept = []  # the batches sensitivities are measured on
    try:
        with torch.no_grad():
            for batch in batches:
                _run(model, batch)
                if len(kept) < SENSITIVITY_BATCHES:
                    kept.append(batch)
                seen += 1
    finally:
        for hook in hooks:
            hook.remove()
    if seen == 0:
        raise InputError("calibrate: no batches (an empty iterable)")
    found = {a.name: a.importance() for a in accumulators}
    found = {name: value for name, value in found.items() if value is not None}
    from .packing.atomic import atomic_path
    from .packing.importance import COVARIANCE_PREFIX, ROW_COVARIANCE_PREFIX, SENSITIVITY, SENSITIVITY_NAMES

    extra = {}
    for acc in accumulators:
        matrix = acc.input_covariance()
        if matrix is not None:
            prefix = ROW_COVARIANCE_PREFIX if transposed_linear(acc.module) else COVARIANCE_PREFIX
            extra[prefix + acc.name] = matrix
    if sensitivity and kept:
        measured = sensitivities(torch, model, kept, accumulators, found)
        extra[SENSITIVITY_NAMES] = np.array(list(measured), dtype=str)
        extra[SENSITIVITY] = np.array(list(measured.values()))
    path = Path(path)
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            np.savez(handle, **found, **extra)
    return found

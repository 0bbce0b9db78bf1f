"""kformat: small, verifiable, lazily loadable containers of quantized model weights.

    import kformat
    kformat.pack("model.safetensors", "model.kf", "mobile")
    with kformat.open("https://cdn.example.com/model.kf") as model:   # header + manifest only
        y = model["fc1.weight"].matmul(x)                              # fetched tile by tile

This module is the public face; the journeys live in packages: kformat.recipe and
kformat.packing (pack), kformat.loading (load), kformat.format (the container), kformat.methods
and kformat.codecs (plug-ins, registered by name), kformat.sources (model files in and out).
"""

from ._version import __version__
from .api import inspect, load_all, pack, unpack, verify
from .compare import Comparison, compare, format_comparison
from .errors import (
    BadMagic,
    DecodeError,
    FormatError,
    InputError,
    IntegrityError,
    KFormatError,
    LimitError,
    NotFound,
    QuantizationError,
    RecipeError,
    StorageError,
    TensorNotFound,
    TruncatedError,
    VersionError,
)
from .loading.container import Container, Problem, open_container
from .loading.lazy import LazyModel, LazyTensor, open_model
from .methods import Method, QuantizedTensor, register_method
from .codecs import Codec, register_codec
from .recipe import PRESETS, Recipe, Rule, build_recipe, load_recipe, parse_rule
from .sources import input_formats
from .summary import format_table as format_summary
from .summary import human_bytes
from .progress import TerminalProgress, configure_logging
from .interrupts import Terminated, terminate_as_interrupt

open = open_model  # noqa: A001 - kformat.open(url) is the loader's front door

__all__ = [
    "TerminalProgress",
    "configure_logging",
    "Terminated",
    "terminate_as_interrupt",
    "__version__",
    "open",
    "open_model",
    "LazyModel",
    "LazyTensor",
    "QuantizedTensor",
    "pack",
    "unpack",
    "inspect",
    "verify",
    "Problem",
    "load_all",
    "compare",
    "Comparison",
    "build_recipe",
    "input_formats",
    "Container",
    "open_container",
    "Recipe",
    "Rule",
    "PRESETS",
    "load_recipe",
    "parse_rule",
    "format_summary",
    "format_comparison",
    "human_bytes",
    "Method",
    "register_method",
    "Codec",
    "register_codec",
    "KFormatError",
    "FormatError",
    "BadMagic",
    "TruncatedError",
    "VersionError",
    "LimitError",
    "IntegrityError",
    "DecodeError",
    "RecipeError",
    "QuantizationError",
    "InputError",
    "StorageError",
    "NotFound",
    "TensorNotFound",
]

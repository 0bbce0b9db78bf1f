"""kformat: small, verifiable, lazily loadable containers of quantized model weights.

    import kformat
    kformat.pack("model.safetensors", "model.kf", "mobile")
    with kformat.open("https://cdn.example.com/model.kf") as model:   # header + manifest only
        y = model["fc1.weight"].matmul(x)                              # fetched tile by tile
"""

__version__ = "0.1.0"

from .api import build_recipe, inspect, load_all, pack, unpack, verify  # noqa: E402
from .errors import (  # noqa: E402
    DecodeError,
    FormatError,
    InputError,
    IntegrityError,
    KFormatError,
    NotFound,
    QuantizationError,
    RecipeError,
    StorageError,
    TensorNotFound,
    VersionError,
)
from .lazy import LazyModel, LazyTensor, QuantizedTensor, open_model  # noqa: E402
from .reader import Container, open_container  # noqa: E402
from .recipe import PRESETS, Recipe, Rule, load_recipe, parse_rule  # noqa: E402

open = open_model  # noqa: A001 - kformat.open(url) is the loader's front door

__all__ = [
    "__version__", "open", "open_model", "LazyModel", "LazyTensor", "QuantizedTensor", "pack", "unpack", "inspect", "verify", "load_all", "build_recipe", "Container",
    "open_container", "Recipe", "Rule", "PRESETS", "load_recipe", "parse_rule", "KFormatError",
    "FormatError", "VersionError", "IntegrityError", "DecodeError", "RecipeError", "QuantizationError",
    "InputError", "StorageError", "NotFound", "TensorNotFound",
]

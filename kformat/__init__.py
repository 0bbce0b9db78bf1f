"""kformat: small, verifiable, lazily loadable containers of quantized model weights."""

__version__ = "0.1.0"

"""The package version, in a module of its own so nothing imports the package back for it."""

__version__ = "0.1.0"

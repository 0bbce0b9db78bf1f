"""`python -m kformat`: the same command line as `kformat`."""

from kformat.cli import run

run()

"""`python -m kformat`: the same command line as `kformat`."""

import sys

from kformat.cli import main

sys.exit(main())

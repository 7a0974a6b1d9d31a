"""``python -m nnx``: the ``nnx`` command (see :mod:`nnx.cli`)."""

import sys

from nnx.cli import main

sys.exit(main())

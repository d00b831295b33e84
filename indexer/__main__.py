"""`python -m indexer` / `torchrun --nproc-per-node N -m indexer ...`: the alpro-index command."""

import sys

from .cli import main

sys.exit(main())

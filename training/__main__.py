"""`python -m training TASK ...` (what torchrun runs): the same as `alpro-train TASK ...`."""

import sys

from .cli import main

sys.exit(main())

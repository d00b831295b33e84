"""`python -m service` = `alpro-serve`."""

import sys

from .cli import main

sys.exit(main())

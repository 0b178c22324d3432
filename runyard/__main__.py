"""`python -m runyard ...`: the same as the `runyard` command."""

import sys

from runyard.cli import main

sys.exit(main())

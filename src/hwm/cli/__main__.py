"""`python -m hwm.cli ...`: the same as the `hwm` command (`hwm study` runs its fits this way)."""

import sys

from hwm.cli.main import main

sys.exit(main())

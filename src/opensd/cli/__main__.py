"""`python -m opensd.cli ...`, the same as the `opensd` command."""
import sys

from . import main

sys.exit(main())

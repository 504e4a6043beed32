"""`python -m casethread`: the `casethread` command, for a checkout without the entry point."""

import sys

from .cli import main

sys.exit(main())

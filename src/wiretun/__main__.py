"""`python -m wiretun` runs the command-line tool."""

import sys

from wiretun.cli import main

sys.exit(main())

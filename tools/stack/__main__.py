"""`python -m tools.stack`: see tools/stack/commands.py."""

import sys

from tools.stack.commands import main

sys.exit(main())

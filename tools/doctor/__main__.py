"""`python -m tools.doctor`: see tools/doctor/checks.py."""

import sys

from tools.doctor.checks import main

sys.exit(main())

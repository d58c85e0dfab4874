"""`python -m tools.ha`: see tools/ha/cluster.py."""

import sys

from tools.ha.cluster import main

sys.exit(main())

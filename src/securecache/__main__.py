"""``python -m securecache``: the same command as the ``securecache`` console script."""

import sys

from securecache.ops.cli import main

sys.exit(main())

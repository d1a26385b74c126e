"""`python -m kerve` behaves like the `kerve` console script."""

import sys

from kerve.cli import main

sys.exit(main())

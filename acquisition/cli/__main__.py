"""``python -m stslive.acquisition.cli``: the console script without the installed entry point."""

import sys

from stslive.acquisition.cli import main

sys.exit(main())

"""Run a recipe: records -> training of every member -> evaluations -> OUT/REPORT.md.

See `python recipe.py --help`; the program lives in `dualencoder/cli/recipe.py`.
"""

import sys

from dualencoder.cli.recipe import main

if __name__ == "__main__":
    sys.exit(main())

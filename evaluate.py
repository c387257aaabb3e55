"""Evaluate dual encoders: `python evaluate.py COMMAND ...` (see `python evaluate.py --help`);
the program is `dualencoder/cli/evaluate.py`."""

import sys

from dualencoder.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())

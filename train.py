"""Train a CLIP-style dual encoder: `python train.py --help` (see `dualencoder.cli.train`)."""

import sys

from dualencoder.cli.train import main

if __name__ == "__main__":
    sys.exit(main())

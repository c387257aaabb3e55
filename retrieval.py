"""Image search with a trained dual encoder: build an embedding index, search it, serve it.

`python retrieval.py --help`; the program is `dualencoder.cli.retrieval`.
"""

import sys

from dualencoder.cli.retrieval import main

if __name__ == "__main__":
    sys.exit(main())

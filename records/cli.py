"""What every command-line program of the project shares (stdlib only): a parser whose errors
are one line, the `error: ...` report with exit status 2, and option value types.

Example:
```python
from records.cli import Parser, UsageError, positive_int, report_error

parser = Parser(prog="tool.py", description="...")
parser.add_argument("--k", type=positive_int, default=10)
try:
    args = parser.parse_args(argv)
except UsageError as exc:
    return report_error(exc)          # prints "error: ... (see tool.py --help)", returns 2
```
"""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input: reported as one `error:` line with exit status 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises `UsageError` (naming `--help`) instead of printing the
    usage and exiting; subcommand parsers made with `add_subparsers(parser_class=Parser)`
    behave the same. Defaults are shown in `--help`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs keep their line breaks; an option with a real default (not
    None, False or empty) shows it after its help."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default in (None, False, "", [], argparse.SUPPRESS)
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def report_error(exc, stream=None) -> int:
    """Print `exc` as one `error: ...` line (whitespace folded) and return `EXIT_USAGE`."""
    print("error: " + " ".join(str(exc).split()), file=stream or sys.stderr)
    return EXIT_USAGE


def positive_int(text: str) -> int:
    """`text` as an int >= 1.

    Example:
    >>> positive_int("8")
    8
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def output_dir(text: str) -> str:
    """An output folder: may exist (as a folder) or not yet; an existing *file* there, or
    inside a path that is a file, is refused before any work starts."""
    import os

    path = os.path.abspath(text)
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if os.path.exists(path) and not os.path.isdir(path):
        where = "" if path == os.path.abspath(text) else f" {path}"
        raise argparse.ArgumentTypeError(f"{text}:{where} exists and is not a directory; give a "
                                         "folder (a new or an existing one)")
    return text


def output_png(text: str) -> str:
    """A PNG file to write: a name ending in .png whose folder is not a file, not a folder
    itself."""
    import os

    if not text.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"{text}: the image is written as PNG; give a name "
                                         "ending in .png")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a .png file name")
    output_dir(os.path.dirname(os.path.abspath(text)))
    return text


def int_list(text: str) -> list:
    """Comma-separated positive ints, sorted and deduplicated ("10,1,5" -> [1, 5, 10])."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return sorted(set(values))

"""Value parsers shared by the command-line programs (`type=` of argparse options).

They raise `argparse.ArgumentTypeError`, which argparse turns into a one-line usage error that
names the option.
"""

from __future__ import annotations

import argparse


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

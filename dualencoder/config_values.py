"""How `Config` reads values: `--set` text parsed as JSON, values converted to each key's
type, numeric intervals and the `*_trainable` spec checked. Messages name the key."""

from __future__ import annotations

import json
from typing import Any


class ConfigError(ValueError):
    """A bad configuration value or key; the message names it."""


def outside(value: float, interval: str) -> str:
    """"" when `value` lies in `interval`, else what it must be ("must be > 0 and <= 1")."""
    lo, hi = (float(x) for x in interval[1:-1].split(","))
    lo_ok = lo < value if interval[0] == "(" else lo <= value
    hi_ok = value < hi if interval[-1] == ")" else value <= hi
    return "" if lo_ok and hi_ok else (f"must be {'>' if interval[0] == '(' else '>='} {lo:g} "
                                       f"and {'<' if interval[-1] == ')' else '<='} {hi:g}")


def parse_value(text: str) -> Any:
    """`--set` values are JSON when they parse as JSON (numbers, true, null), else strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def check_trainable(where: str, value: Any) -> None:
    if value in ("all", "none"):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}={value!r}: use \"all\", \"none\" or a number of top "
                          "blocks/layers to train (an integer >= 0)")


def coerce(dotted: str, value: Any, default: Any, origin: str) -> Any:
    if default is None or dotted.endswith("_trainable"):
        return value
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{origin}: {dotted}={value!r} is not a boolean (true/false)")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{origin}: {dotted}={value!r} is not an integer")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{origin}: {dotted}={value!r} is not a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            value = json.dumps(value) if not isinstance(value, (int, float)) else str(value)
        return value
    return value

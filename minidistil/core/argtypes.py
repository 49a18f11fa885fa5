"""Value rules: each one checks that a number lies in its range and says why not in one line.

The command line uses them as argparse types, so a value out of range is refused at parse time ("argument --steps:
must be >= 1") instead of hanging or training on nonsense; the library applies the same rules to its configs'
fields (check_fields), so an API call and a command line get the same answer. Plain values in, plain values out:
nothing here knows the commands.
"""
from __future__ import annotations

import argparse
import math


def bounded(kind: type, at_least: float | None = None, *, above: float | None = None,
            at_most: float | None = None, below: float | None = None):
    """An argparse type: `kind(value)` (int or float; finite), refused unless it lies in the stated range. Also
    accepts numbers, so a config check can apply the same rule to an API argument."""
    rules = [(f">= {at_least:g}", lambda v: v >= at_least) if at_least is not None else None,
             (f"> {above:g}", lambda v: v > above) if above is not None else None,
             (f"<= {at_most:g}", lambda v: v <= at_most) if at_most is not None else None,
             (f"< {below:g}", lambda v: v < below) if below is not None else None]
    rules = [r for r in rules if r]
    need = "must be " + " and ".join(text for text, _ in rules) if rules else ""

    def parse(value):
        if isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"expected {'an int' if kind is int else 'a number'}, got {value!r}")
        if isinstance(value, str):
            try:
                value = kind(value.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {value!r}") from None
        elif kind is int and value != int(value):
            raise argparse.ArgumentTypeError(f"expected an int, got {value!r}")
        value = kind(value)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
        if not all(ok(value) for _, ok in rules):
            raise argparse.ArgumentTypeError(f"{need}, got {value:g}")
        return value

    parse.__name__ = kind.__name__
    return parse


POSITIVE_INT = bounded(int, 1)              # counts that must be at least one: --steps, --batch-size, --epochs
COUNT = bounded(int, 0)                     # counts that may be 0: --checkpoint-every, --stride, --seed
POSITIVE = bounded(float, above=0)          # --lr, --time-budget, --temperature, --max-grad-norm
NON_NEGATIVE = bounded(float, 0)            # --weight-decay, loss weights
SHARE = bounded(float, 0, below=1)          # shares of a whole that leave something: --warmup, --held-out
WEIGHT = bounded(float, 0, at_most=1)       # mixing weights: --alpha


def int_list(value: str) -> list[int]:
    """An argparse type: comma-separated ints >= 0 ("0,2,4")."""
    try:
        out = [int(x) for x in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0,2,4, got {value!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"must be numbers >= 0, got {value!r}")
    return out


def check_fields(config, types: dict) -> None:
    """Apply the argument types to a config's fields (None is left alone): a ValueError names the field."""
    for name, parse in types.items():
        value = getattr(config, name)
        if value is not None:
            try:
                parse(value)
            except argparse.ArgumentTypeError as e:
                raise ValueError(f"{name}: {e}") from None

"""The X/Y/Z plot's value syntax, as the WebUI's ``scripts/xyz_grid.py`` reads it.

- Values are CSV: ``a, b, "c, with a comma"`` (Python's csv rules, each value stripped; a
  quote only opens a quoted value at the very start of a field, as in the WebUI).
- Whole numbers: ``1-5`` (1..5), ``1-5 (+2)`` (1, 3, 5; the step needs its sign), ``1-10 [5]``
  (5 values spread evenly, truncated to whole numbers).
- Numbers: ``0.5-1.5 (+0.25)`` (end included), ``0-1 [5]``.
"""

from __future__ import annotations

import csv
import re
from io import StringIO
from itertools import chain, permutations

import numpy as np

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*\d+(?:\.\d*)?"
RANGE = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\(([+-]\d+)\s*\))?\s*")
RANGE_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
RANGE_COUNT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\[(\d+)\s*])?\s*")
RANGE_COUNT_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\[(\d+)\s*])?\s*")
SYNTAX_HINT = "write a list (1, 2, 3) or a range: 1-5, 1-5 (+2), 1-10 [5], 0.5-1.5 (+0.25)"


class ValueSyntaxError(ValueError):
    """A value that is neither a number of the axis' kind nor a range."""


def csv_to_list(text: str) -> list[str]:
    """``a, "b, c"`` → ``["a", "b, c"]`` (the WebUI's csv_string_to_list_strip)."""
    return [v.strip() for v in chain.from_iterable(csv.reader(StringIO(text or "")))]


def list_to_csv(values: list[str]) -> str:
    """The inverse, for the fill-values button: values with commas come back quoted."""
    with StringIO() as out:
        csv.writer(out).writerow(values)
        return out.getvalue().strip()


def _int(text: str) -> int:
    return int(text.replace(" ", ""))


def _float(text: str) -> float:
    return float(text.replace(" ", ""))


def expand_ints(values: list[str]) -> list[int]:
    """Each value a whole number or an int range. The end of ``a-b (+s)`` is ``b + 1`` whatever
    the step's sign, as in the WebUI, so a script gets the same cells it got there."""
    out: list[int] = []
    for value in values:
        m, mc = RANGE.fullmatch(value), RANGE_COUNT.fullmatch(value)
        if m is not None:
            step = int(m.group(3)) if m.group(3) is not None else 1
            if step == 0:
                raise ValueSyntaxError(f"{value!r}: the step of a range cannot be 0")
            out += list(range(_int(m.group(1)), _int(m.group(2)) + 1, step))
        elif mc is not None:
            num = int(mc.group(3)) if mc.group(3) is not None else 1
            out += [int(x) for x in np.linspace(_int(mc.group(1)), _int(mc.group(2)), num).tolist()]
        else:
            try:
                out.append(int(value))
            except ValueError:
                raise ValueSyntaxError(f"{value!r} is not a whole number or a range; {SYNTAX_HINT}") from None
    return out


def expand_floats(values: list[str]) -> list[float]:
    """Each value a number or a float range; ``a-b (+s)`` is numpy's arange up to ``b + s``
    (so ``b`` itself is included), ``a-b [n]`` is linspace, as in the WebUI."""
    out: list[float] = []
    for value in values:
        m, mc = RANGE_FLOAT.fullmatch(value), RANGE_COUNT_FLOAT.fullmatch(value)
        if m is not None:
            start, end = _float(m.group(1)), _float(m.group(2))
            step = float(m.group(3)) if m.group(3) is not None else 1.0
            if step == 0:
                raise ValueSyntaxError(f"{value!r}: the step of a range cannot be 0")
            out += np.arange(start, end + step, step).tolist()
        elif mc is not None:
            num = int(mc.group(3)) if mc.group(3) is not None else 1
            out += np.linspace(_float(mc.group(1)), _float(mc.group(2)), num).tolist()
        else:
            try:
                out.append(float(value))
            except ValueError:
                raise ValueSyntaxError(f"{value!r} is not a number or a range; {SYNTAX_HINT}") from None
    return out


def orders(values: list[str]) -> list[tuple[str, ...]]:
    """Prompt order: every permutation of the listed tokens."""
    return list(permutations(values))


def format_number(value: object) -> object:
    """Floats rounded to 8 digits for labels (0.30000000000000004 → 0.3), as the WebUI."""
    return round(value, 8) if isinstance(value, float) else value

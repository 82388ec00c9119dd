"""Whole numbers from clients (query strings, form lists, headers), read one way everywhere.

`str.isdigit()` alone is not a check: it is true for "²" and "١٢", which `int()` then refuses or reads, and for a
200-digit number that no id column holds (PostgreSQL answers "bigint out of range", a 500). `whole` takes ASCII
digits only, within a range.
"""

from __future__ import annotations

MAX_ID = 2**63 - 1  # the largest value of a BigAutoField / bigint column: a larger id is a client's error


def whole(text: str, *, minimum: int = 0, maximum: int = MAX_ID) -> int | None:
    """`text` as an int if it is ASCII digits only and from `minimum` to `maximum`, else None."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(maximum)):
        return None
    value = int(text)
    return value if minimum <= value <= maximum else None

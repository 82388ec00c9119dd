"""esaroutes.numbers.whole: the one reader of whole numbers that clients send."""

from __future__ import annotations

import pytest

from esaroutes.numbers import MAX_ID, whole


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("42", 42),
        ("007", 7),
        (str(MAX_ID), MAX_ID),
        (str(MAX_ID + 1), None),  # past a bigint column: PostgreSQL would answer "out of range", a 500
        ("9" * 200, None),
        ("", None),
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("1.0", None),
        ("²", None),  # "²".isdigit() is true and int("²") raises
        ("١٢", None),  # Arabic-Indic digits: int() reads them, ids are ASCII
    ],
)
def test_whole_takes_ascii_digits_within_the_id_range(text, expected):
    assert whole(text) == expected


def test_whole_keeps_to_the_range_it_is_given():
    assert whole("0", minimum=1) is None
    assert whole("1", minimum=1) == 1
    assert whole("101", maximum=100) is None

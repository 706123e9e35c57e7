"""CSV cells a spreadsheet shows as what they are (OWASP's advice against CSV injection).

A text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is read as a formula
by Excel, LibreOffice and Google Sheets (`=HYPERLINK(...)`); it gets a leading `'`, which they
show as text. Numbers (int, Decimal, float) are written as numbers: a genuinely negative figure
such as a lift of -1.5 stays a number, and a number cannot carry a formula.
"""

from __future__ import annotations

from decimal import Decimal

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """The value to write in a cell: numbers as they are, None as empty, text neutralised."""
    if value is None:
        return ""
    if isinstance(value, int | float | Decimal):
        return value
    text = str(value)
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


__all__ = ["FORMULA_STARTS", "csv_cell"]

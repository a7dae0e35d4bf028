"""Cell values for CSV files that people open in spreadsheets."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, BinaryIO, TextIO

# A spreadsheet treats a cell that starts with one of these as a formula.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def text_cell(text: str) -> str:
    """Return `text` with a leading apostrophe if a spreadsheet would run it as a formula.

    Names of teams, projects and keys come from users, so a name such as
    "=HYPERLINK(...)" must reach the spreadsheet as text (OWASP's advice on
    CSV injection).
    """
    if text.startswith(_FORMULA_PREFIXES):
        return "'" + text
    return text


def cell(value: Any) -> Any:
    """Return the value as the csv module should write it."""
    if isinstance(value, Decimal):
        # Fixed-point with every stored digit, never exponent notation such as 0E-10.
        return format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, str):
        return text_cell(value)
    return value


def spool_to_file(write: Callable[[TextIO], object]) -> BinaryIO:
    """Run `write` on a temporary text file and return the file reopened for reading.

    The file is unlinked before this returns, so it disappears once the
    handle is closed or garbage-collected. The handle is a BufferedReader,
    which st.download_button accepts from a deferred data callable.
    """
    descriptor, path = tempfile.mkstemp(prefix="gatewayz-", suffix=".csv")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as spool:
            write(spool)
        return open(path, "rb")  # noqa: SIM115 - the caller owns and closes the handle
    finally:
        os.unlink(path)

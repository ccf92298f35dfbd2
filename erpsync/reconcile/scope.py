"""The scope of a run (SQL ``LIKE`` patterns on SKUs and order ids) in the forms each store needs.

The ERP and the ops database take the pattern as it is; MariaDB's ``LIKE`` ignores case, so its rows
are filtered again with ``like_regex``; Redis ``HSCAN MATCH`` takes a glob (``like_glob``). Pure, and
shared by both readers (``sources``, ``published``).
"""

from __future__ import annotations

import re


def like_regex(pattern: str | None) -> re.Pattern[str]:
    """A regex matching exactly what SQL ``LIKE pattern`` matches (backslash escapes; None: everything)."""
    if pattern is None:
        return re.compile(r".*", re.DOTALL)
    out, chars = [], iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars, "\\")))
        else:
            out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def like_glob(pattern: str | None) -> str:
    """The Redis glob (HSCAN MATCH) equivalent of SQL ``LIKE pattern``."""
    if pattern is None:
        return "*"
    out, chars = [], iter(pattern)
    for ch in chars:
        if ch == "\\":
            ch = next(chars, "\\")
            out.append("\\" + ch if ch in "*?[]\\" else ch)
        elif ch in "%_":
            out.append("*" if ch == "%" else "?")
        else:
            out.append("\\" + ch if ch in "*?[]\\" else ch)
    return "".join(out)

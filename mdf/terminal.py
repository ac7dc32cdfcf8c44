"""Text made safe to print to a terminal or to hand to a spreadsheet.

File names, manifest fields and model text come from outside: an escape sequence in
a file name can move the cursor, recolour or erase the operator's failure lines, and
a bidirectional override can make a name read backwards. ``printable`` removes escape
sequences, C0 and C1 control characters and bidi controls from anything the service
prints. A CSV cell that starts with ``=``, ``+``, ``-``, ``@``, tab or carriage return
is a formula to a spreadsheet; ``csv_cell`` prefixes it with a single quote, as the
OWASP guidance on CSV injection says.
"""

from __future__ import annotations

import re

# CSI (ESC [ ... final) and OSC (ESC ] ... BEL or ESC \), else any other ESC pair,
# then lone C0/DEL/C1 controls and the Unicode bidirectional controls.
_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?")
_CONTROL = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def printable(text: str, *, keep: str = "") -> str:
    """``text`` without escape sequences and control characters, but those in ``keep``."""
    allowed = "".join(re.escape(c) for c in keep)
    control = f"[{_CONTROL}]" if not keep else f"(?![{allowed}])[{_CONTROL}]"
    return re.sub(control, "", _SEQUENCE.sub("", text))


def csv_cell(value: object) -> object:
    """A value for a CSV cell: text without terminal controls, a formula start neutralised."""
    if not isinstance(value, str):
        return value
    text = printable(value, keep="\t\n\r")
    return "'" + text if text.startswith(_FORMULA_START) else text

"""The one error type of the ``mdf`` commands.

A command raises :class:`CommandError` for anything the person at the terminal can fix
(a wrong name, a missing file, an unmigrated database); ``mdf.cli.main`` prints its
message as one line on stderr and exits 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["EXIT_USAGE", "CommandError"]

#: The exit status of a refused command, as argparse uses for a bad command line.
EXIT_USAGE = 2


class CommandError(Exception):
    """A command cannot do what was asked; the message says why, in one line."""

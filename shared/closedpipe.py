"""A command whose reader went away (``mini-connector status | head -1``, ``mini-relay
token | cut -c1-5``) ends quietly with 141, as a Unix tool ended by SIGPIPE does, never
with a traceback or Python's "Exception ignored ... BrokenPipeError" and exit 120."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a tool ended by SIGPIPE


def quiet_on_closed_pipe(run: Callable[[], int]) -> int:
    """``run()``'s exit code, or ``EXIT_BROKEN_PIPE`` when stdout's reader has gone. stdout
    is flushed here, not at the interpreter's exit (argparse's --help exits too): a
    block-buffered stdout (any shell without PYTHONUNBUFFERED) would meet the closed pipe
    there, past every handler."""
    try:
        try:
            return run()
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        # Python's final flush of stdout would fail again: point it at devnull first.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE

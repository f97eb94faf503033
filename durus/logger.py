"""Durus 4.3's ``durus.logger``, for Durus 4.3 programs: the ``durus`` logger,
which on first import (when it has no handler yet) writes bare messages at
INFO and above to stderr, as 4.3's did.

The project's own modules log with :mod:`logging` directly and never import
this module, so importing it changes nothing for them unless a 4.3 program
does.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["direct_output", "is_logging", "log", "logger"]

logger = logging.getLogger("durus")  # for Durus 4.3 programs
log = logger.log  # log(level, message, *args), for Durus 4.3 programs


def direct_output(file: TextIO) -> None:
    """Send the durus logger's messages (INFO and up, bare) and, unless ``file`` is the real stderr,
    print() output and stderr too, to ``file``; for Durus 4.3 programs."""
    handler = logging.StreamHandler(file)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if file is sys.__stderr__:
        return
    for name, original in (("stdout", sys.__stdout__), ("stderr", sys.__stderr__)):
        if getattr(sys, name) is original:
            setattr(sys, name, file)
        else:
            log(100, f"sys.{name} was already redirected; left as it is.")


def is_logging(level: int) -> bool:
    """Whether the durus logger passes messages of ``level``, for Durus 4.3 programs."""
    return logger.getEffectiveLevel() <= level


if not logger.handlers:
    direct_output(sys.stderr)

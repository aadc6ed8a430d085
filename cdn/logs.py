"""The one log set-up of both programs: structured one-line records on stderr.

A line reads `ts=... level=INFO logger=georouter.fleet event=... key=value`; the message
part is written by each call site as `key=value` pairs.
"""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """Send every logger's records to stderr in LOG_FORMAT (once per process)."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)

"""The service's own log lines, beside uvicorn's: one handler, never a header or a token."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    """The service's own log lines (`duet.*`) to stderr, beside uvicorn's. Never a header or a token."""
    logger = logging.getLogger("duet")
    if not any(getattr(h, "_duet", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     [%(process)d] %(name)s: %(message)s"))
        handler._duet = True
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False

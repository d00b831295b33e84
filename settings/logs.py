"""Third-party log lines that read as errors but are not, demoted to DEBUG for every program.

FAISS's loader tries its AVX512 and AVX2 builds first and logs each miss at INFO ("Could not load library
with AVX2 support due to: ModuleNotFoundError ..."), then loads the generic build fine: at INFO that reads
as a failure on every start of alpro-serve. Its records below WARNING are re-issued as DEBUG (shown with
--log-level debug / -vv, hidden otherwise); a real failure (its ERROR) still shows.
"""

from __future__ import annotations

import logging

NOISY_LOGGERS = ("faiss.loader",)


class _DemoteToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        # the logger let the record through at its INFO level; whether DEBUG is wanted is asked again here
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_FILTER = _DemoteToDebug()


def demote_library_logs() -> None:
    """Idempotent; effective for records logged after it (the filter sits on the logger, which FAISS looks up
    by name when it is imported, so calling this before `import faiss` is what counts)."""
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)

"""Logging policy for flow runs: an error the user can fix is reported as its message, not as a traceback."""

from __future__ import annotations

import logging

from tasks.adapters.errors import AuditlensError

PREFECT_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


class UserErrorsWithoutTraceback(logging.Filter):
    """Prefect logs every failed task with its traceback; for AuditlensError the message already says
    what is wrong and how to fix it, and a traceback would bury that."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], AuditlensError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_user_errors() -> None:
    for name in PREFECT_RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, UserErrorsWithoutTraceback) for f in logger.filters):
            logger.addFilter(UserErrorsWithoutTraceback())

"""Errors a user can fix. Each names the problem and the fix; the CLI prints them without a traceback."""

from __future__ import annotations


class AuditlensError(Exception):
    """Base of the errors caused by input (configuration, model, data, servers), not by a bug."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}\n  fix: {fix}" if fix else problem)

    def __reduce__(self):  # crosses process boundaries (Dask workers) whole: problem and fix, not the joined text
        return type(self), (self.problem, self.fix)


class ConfigError(AuditlensError):
    pass


class ModelNotFoundError(AuditlensError):
    pass


class ModelLoadError(AuditlensError):
    pass


class DataError(AuditlensError):
    pass


class TrackingServerError(AuditlensError):
    pass


class ModelOutputError(AuditlensError):
    """The model answered, but not with one valid prediction per row (NaN, the wrong shape, a class it does not have)."""


class ModelTimeoutError(AuditlensError):
    pass

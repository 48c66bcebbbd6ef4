"""Every error the simulator raises on purpose; each names what was wrong and where.

    SimError                      the root: catch it to report any of them in one line
        InputError                where (a file, a store), reason
            FitError              usage that cannot be fitted (margins fit)
            ForecastErrorError    a forecast or store that cannot be compared (margins forecast-error)
            BacktestError         a cut-off or horizon the data cannot back-test (margins backtest)
        FieldError                path, field, reason: a file with a bad field
            ScenarioError         a scenario file (or a sweep's --vary)
            QuerySetError         a labelled query file (margins calibrate semantic)
            RulesError            a router rules file (margins eval router)
        TraceError                path, line, field, reason: a trace row (margins replay, fit)
        EvalSetError              path, line, reason: an eval set line (margins eval router)
        UnreadableFile            reason: a file that is missing or not text; readers turn it into theirs
        EmbeddingUnavailable      the optional semantic extra is not installed or will not load
        StarterError              the starter files cannot be found or written (margins init)
        ClusterError              url, reason: a cluster that cannot run a sweep's points (--executor)
        WorkerCannotRun           raised on a cluster's worker that cannot run a task (no --spill there)
            WorkerMismatch        raised on a cluster's worker that runs other margins code
        ArgumentError             argument, reason: a value a function cannot use (also a ValueError)

Files get InputError, FieldError and their kin; ArgumentError is for a caller of the Python API.
"""

from __future__ import annotations


class SimError(Exception):
    """Root of the sim package's errors."""


class InputError(SimError):
    """Input that cannot be used, named by where it is (a file, a store) and what is wrong."""

    def __init__(self, where: str, reason: str) -> None:
        self.where, self.reason = where, reason
        super().__init__(f"{where}: {reason}")


class FitError(InputError):
    """Usage that cannot be fitted (nothing in the month, an unreadable store)."""


class ForecastErrorError(InputError):
    """A forecast file or store that cannot be compared; names the file and what is wrong."""


class BacktestError(InputError):
    """A back-test that cannot run: a cut-off outside the data, a horizon past its end, nothing before it."""


class FieldError(SimError):
    """A file that cannot be used: names the file, the field (or the place in it) and what was expected."""

    def __init__(self, path: str, field: str, reason: str) -> None:
        self.path = path
        self.field = field
        self.reason = reason
        super().__init__(f"{path}: {field}: {reason}")


class ScenarioError(FieldError):
    """A scenario file that cannot be used."""


class QuerySetError(FieldError):
    """A query file that cannot be used: names the file, where in it, and what was wrong."""


class RulesError(FieldError):
    """A rules file that cannot be used: names the file, the field and what was expected."""


class TraceError(SimError):
    """A trace file that cannot be replayed: names the file, the line (1-based; 0 = the whole file) and
    the field."""

    def __init__(self, path: str, line: int, field: str, reason: str) -> None:
        self.path, self.line, self.field, self.reason = path, line, field, reason
        where = f"{path}: line {line}" if line else path
        super().__init__(f"{where}: {field}: {reason}")


class EvalSetError(SimError):
    """An eval set line that cannot be used: names the file, the line (1-based) and what was expected."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"line {line}" if line is not None else "(file)"
        super().__init__(f"{path}: {where}: {reason}")


class UnreadableFile(SimError):
    """The file is missing or is not text in the expected encoding; `reason` says which."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class EmbeddingUnavailable(SimError):
    """The semantic extra is not installed (or its model cannot be loaded)."""


class StarterError(SimError):
    """The starter files cannot be found or cannot be written; the message says which and where."""


class ClusterError(SimError):
    """A cluster that cannot run a sweep's points -- unreachable, gone, without workers, or with workers
    that run other margins code: names the cluster's URL and what happened. No partial result exists."""

    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__(f"{url}: {reason}")


class WorkerCannotRun(SimError):
    """Raised on a Dask worker that cannot run a task there (a `--spill` directory it does not have); the
    client reports it as a ClusterError. Its one argument is the whole message, so it pickles back."""


class WorkerMismatch(WorkerCannotRun):
    """Raised on a Dask worker, where a point is about to run, when that worker's margins, code or numpy
    differ from the client's; the client reports it as a ClusterError."""


class ArgumentError(SimError, ValueError):
    """A value given to a function of the Python API that it cannot use: names the argument and what was
    expected. Also a ValueError, which is what such a caller may catch."""

    def __init__(self, argument: str, reason: str) -> None:
        self.argument, self.reason = argument, reason
        super().__init__(f"{argument}: {reason}")

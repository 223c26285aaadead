"""Error hierarchy: every error names what was wrong, the bad value and the fix."""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base class of every error the workbench raises on purpose."""


class ConfigError(WorkbenchError, ValueError):
    """The configuration (file, overlay or environment) is invalid."""


class SchemaError(WorkbenchError, ValueError):
    """A frame does not satisfy a column contract (bars, features, labels, targets)."""

    def __init__(self, message: str, *, rule: str = "", n_rows: int = 0) -> None:
        super().__init__(message)
        self.rule = rule
        self.n_rows = n_rows


class StoreError(WorkbenchError):
    """The bar or feature store cannot complete an operation."""


class SourceError(WorkbenchError):
    """A data source cannot deliver the requested data."""


class CredentialsError(WorkbenchError):
    """Broker or data credentials are missing or invalid."""


class PipelineError(WorkbenchError):
    """A pipeline spec is invalid or a step failed."""


class DataQualityError(WorkbenchError):
    """Ingested bars fail a severe data-quality check; the message is the readable report."""


class ParameterError(WorkbenchError, ValueError):
    """A function or estimator got an invalid parameter (splitters, overfitting statistics)."""

"""Errors raised by the storage layer.

Each class's docstring is its default message; ``code`` is a stable identifier, like the one
``detectors.errors`` gives, for a caller that records the failure. All of them are transient as far
as the storage layer knows: the same call may succeed later. Constraint violations and other bugs
surface as SQLAlchemy's own exceptions.
"""

from __future__ import annotations

from detectors.errors import DrishtikshaError


class StorageError(DrishtikshaError):
    """The job database failed."""

    code = "storage_error"
    # The same call may succeed later (see above).
    retryable = True


class StorageBusy(StorageError):
    """The job database stayed locked by other writers; try again shortly."""

    code = "storage_busy"


class StorageUnavailable(StorageError):
    """The job database cannot be reached."""

    code = "storage_unavailable"


class DatabaseMissing(StorageError):
    """The job database does not exist yet: start the daemon or run `drishtiksha db upgrade`."""

    code = "database_missing"

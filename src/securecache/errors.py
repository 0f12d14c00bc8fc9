"""Typed errors of securecache.

Every error the library raises on purpose derives from :class:`SecureCacheError`, so an
application can catch the library's failures with one ``except`` and let bugs through::

    SecureCacheError
     ├── ValidationError        (also ValueError)   bad id, score value, setting or input
     │    └── ConfigurationError                    a setting is missing or malformed
     ├── NotFoundError          (also LookupError)  a score written for an unknown security
     ├── ConflictError                              ``if_version`` did not match the row
     ├── PermissionDeniedError  (also PermissionError) the database role may not do this
     └── UnavailableError                           PostgreSQL could not be reached in time
"""

from __future__ import annotations


class SecureCacheError(Exception):
    """Root of every error securecache raises on purpose."""


class ValidationError(SecureCacheError, ValueError):
    """Input that breaks the data model's rules; nothing was written."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConfigurationError(ValidationError):
    """A setting is missing or malformed (raised at start-up, never mid-request)."""


class NotFoundError(SecureCacheError, LookupError):
    """The record a write refers to does not exist (a score for an unknown security)."""

    def __init__(self, message: str, *, security_id: str) -> None:
        super().__init__(message)
        self.security_id = security_id


class ConflictError(SecureCacheError):
    """Optimistic concurrency failed: the row's version is not the one expected."""

    def __init__(self, message: str, *, expected: int, actual: int | None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class PermissionDeniedError(SecureCacheError, PermissionError):
    """The database role this process uses may not do what was asked (a reader writing)."""


class UnavailableError(SecureCacheError):
    """The source of truth (PostgreSQL) could not serve the request; retry later."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after

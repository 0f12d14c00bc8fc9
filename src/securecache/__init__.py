"""securecache: read-through / write-through caching of Security and Score records.

PostgreSQL is the source of truth, Redis the shared cache. Start with :class:`SecureCache`
(async) or :class:`securecache.sync.SecureCache`.
"""

from securecache._version import __version__
from securecache.client import SecureCache
from securecache.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    SecureCacheError,
    UnavailableError,
    ValidationError,
)
from securecache.models import Health, Page, Score, ScoreUpdate, ScoreWrite, Security
from securecache.settings import Settings

__all__ = [
    "ConfigurationError",
    "ConflictError",
    "Health",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "Score",
    "ScoreUpdate",
    "ScoreWrite",
    "SecureCache",
    "SecureCacheError",
    "Security",
    "Settings",
    "UnavailableError",
    "ValidationError",
    "__version__",
]

"""Secrets kept out of what people read: URLs shown redacted, and a logging filter as a net.

Settings never echo a URL they refuse, but other code logs what it was given: psycopg's pool,
for one, logs connection errors on every retry, and libpq's messages can quote a conninfo.
:class:`RedactSecrets` rewrites any URL password or ``password=`` pair in a log record.
"""

from __future__ import annotations

import logging
import re
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SECRET_PARAMETERS: Final = frozenset({"password", "sslpassword"})
"""Connection parameters (URL query or conninfo keys) that hold secrets."""
_URL_PASSWORD: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@]*@")
_PARAMETER: Final = re.compile(r"(?i)\b((?:ssl)?password\s*=\s*)('[^']*'|[^\s&'\"]+)")
LOGGERS: Final = (
    "psycopg",
    "psycopg.pool",
    "psycopg.pq",
    "psycopg.conninfo",
    "redis",
    "redis.connection",
    "redis.cluster",
    "redis.asyncio.connection",
    "redis.asyncio.cluster",
)
"""Loggers of the libraries that may log what they were configured with. A logger's filter
sees only the records logged on that very logger, not its children's, so each is named; a
process that owns its logging (the servers) also puts the filter on its handlers."""


def redact_url(url: str | None) -> str | None:
    """The URL with any password (in the authority or the query) replaced by ``***``."""
    if not url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = urlencode(
        [
            (k, "***" if k.lower() in SECRET_PARAMETERS else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_text(text: str) -> str:
    """``text`` with URL passwords and ``password=...`` pairs replaced by ``***``."""
    return _PARAMETER.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


class RedactSecrets(logging.Filter):
    """Rewrites a record's message so that no password in it reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install(loggers: tuple[str, ...] = LOGGERS) -> None:
    """Put one :class:`RedactSecrets` on each of ``loggers`` (idempotent)."""
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())

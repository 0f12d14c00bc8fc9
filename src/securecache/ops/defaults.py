"""Names and defaults shared by the CLI and the dev stack (so neither imports the other)."""

from __future__ import annotations

from typing import Final

DATABASE_URL_VAR: Final = "SECURECACHE_DATABASE_URL"
REDIS_URL_VAR: Final = "SECURECACHE_REDIS_URL"
# Names of variables, not secrets:
WRITER_PASSWORD_VAR: Final = "SECURECACHE_WRITER_PASSWORD"  # noqa: S105
READER_PASSWORD_VAR: Final = "SECURECACHE_READER_PASSWORD"  # noqa: S105
API_TOKENS_VAR: Final = "SECURECACHE_API_TOKENS"

PUBLIC_PORT: Final = 8080
INTERNAL_PORT: Final = 8081
DEV_SEED_COUNT: Final = 1000
DEV_DATABASE: Final = "securecache"
"""The database ``dev`` creates on embedded servers (their superuser URL names ``postgres``)."""
STATE_DIR_NAME: Final = ".securecache"
"""Where embedded servers and dev secrets live, under the working directory."""

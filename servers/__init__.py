"""The HTTP edges of securecache: a read-only public API and an authenticated internal API.

Each is a thin Starlette application over :class:`securecache.SecureCache`: parse, validate,
call the library, render. No SQL and no Redis commands live here.
"""

"""The public API, pinned: what ``securecache`` and ``securecache.sync`` export, and their shape."""

from __future__ import annotations

import inspect

import pytest

import securecache
import securecache.sync
from securecache import Settings, client, sync

EXPORTED = [
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
SYNC_EXPORTED = ["Scores", "SecureCache", "Securities"]

# Async names whose sync twin is spelled differently (svcs/psycopg habit: aclose -> close).
RENAMED = {"aclose": "close", "__aenter__": "__enter__", "__aexit__": "__exit__"}
PAIRS = [
    (client.Securities, sync.Securities),
    (client.Scores, sync.Scores),
    (client.SecureCache, sync.SecureCache),
]


def _public_methods(cls: type) -> set[str]:
    return {
        name
        for name, member in inspect.getmembers(cls)
        if (not name.startswith("_") or name in RENAMED.values() or name in RENAMED)
        and callable(member)
        and not inspect.isclass(member)
    }


def test_all_is_pinned_and_sorted() -> None:
    """securecache.__all__ is exactly the agreed list, in sorted order."""
    assert securecache.__all__ == EXPORTED
    assert sorted(securecache.__all__) == securecache.__all__


def test_every_exported_name_exists() -> None:
    """Each name in __all__ resolves on the package (no stale entries)."""
    for name in securecache.__all__:
        assert getattr(securecache, name) is not None, name


def test_version_is_a_string() -> None:
    """__version__ is a non-empty version string."""
    assert isinstance(securecache.__version__, str)
    assert securecache.__version__[0].isdigit()


def test_sync_all_is_pinned() -> None:
    """securecache.sync.__all__ is exactly the sync facade and its two namespaces."""
    assert securecache.sync.__all__ == SYNC_EXPORTED
    for name in SYNC_EXPORTED:
        assert inspect.isclass(getattr(securecache.sync, name))


def test_sync_public_names_are_only_the_exports() -> None:
    """The sync module defines no other public classes or functions of its own."""
    own = {
        name
        for name, member in vars(securecache.sync).items()
        if not name.startswith("_")
        and (inspect.isclass(member) or inspect.isfunction(member))
        and getattr(member, "__module__", None) == "securecache.sync"
    }
    assert own == set(SYNC_EXPORTED)


def test_errors_share_one_base() -> None:
    """Every exported error derives from SecureCacheError (one except catches them all)."""
    errors = [
        getattr(securecache, n) for n in EXPORTED if n.endswith("Error") and n != "SecureCacheError"
    ]
    assert errors
    for error in errors:
        assert issubclass(error, securecache.SecureCacheError)
    assert issubclass(securecache.ValidationError, ValueError)
    assert issubclass(securecache.NotFoundError, LookupError)
    assert issubclass(securecache.PermissionDeniedError, PermissionError)
    assert issubclass(securecache.ConfigurationError, securecache.ValidationError)


@pytest.mark.parametrize(("async_cls", "sync_cls"), PAIRS, ids=lambda c: c.__name__)
def test_sync_twin_has_the_same_methods(async_cls: type, sync_cls: type) -> None:
    """Every public method of the async class has a sync twin of the same (or mapped) name."""
    expected = {RENAMED.get(name, name) for name in _public_methods(async_cls)}
    assert _public_methods(sync_cls) == expected


@pytest.mark.parametrize(("async_cls", "sync_cls"), PAIRS, ids=lambda c: c.__name__)
def test_sync_twin_methods_take_the_same_parameters(async_cls: type, sync_cls: type) -> None:
    """Each twin method takes the same parameters, with the same kinds and defaults."""
    for name in _public_methods(async_cls):
        if name.startswith("__"):
            continue
        async_params = inspect.signature(getattr(async_cls, name)).parameters
        sync_params = inspect.signature(getattr(sync_cls, RENAMED.get(name, name))).parameters
        assert [(p.name, p.kind, p.default) for p in async_params.values()] == [
            (p.name, p.kind, p.default) for p in sync_params.values()
        ], name


@pytest.mark.parametrize(("async_cls", "sync_cls"), PAIRS, ids=lambda c: c.__name__)
def test_async_methods_are_coroutines_and_sync_ones_are_not(
    async_cls: type, sync_cls: type
) -> None:
    """The async API's I/O methods are coroutine functions; none of the twin's are."""
    for name in _public_methods(async_cls):
        twin = getattr(sync_cls, RENAMED.get(name, name))
        assert not inspect.iscoroutinefunction(twin), name
    assert any(
        inspect.iscoroutinefunction(getattr(async_cls, n)) for n in _public_methods(async_cls)
    )


def test_facades_take_the_same_constructor_arguments() -> None:
    """Both facades take the same constructor arguments (settings, providers, the Redis seam)."""
    async_init = inspect.signature(client.SecureCache.__init__).parameters
    sync_init = inspect.signature(sync.SecureCache.__init__).parameters
    assert list(async_init) == list(sync_init)
    assert list(async_init) == [
        "self",
        "settings",
        "tracer_provider",
        "meter_provider",
        "wrap_redis",
    ]


async def test_facades_expose_the_same_namespaces() -> None:
    """Both facades carry settings, securities and scores, each of its own flavour."""
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none")
    async_cache = client.SecureCache(settings)
    assert isinstance(async_cache.securities, client.Securities)
    assert isinstance(async_cache.scores, client.Scores)
    assert async_cache.settings is settings
    sync_cache = sync.SecureCache(settings)
    try:
        assert isinstance(sync_cache.securities, sync.Securities)
        assert isinstance(sync_cache.scores, sync.Scores)
        assert sync_cache.settings is settings
    finally:
        sync_cache.close()

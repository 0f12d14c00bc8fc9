"""What only a Redis administrator does for securecache: load the library's scripts.

Service users may run the scripts but not load them (see :mod:`securecache.ops.acl`), so an
administrator loads them once per server, and again after a restart or a ``SCRIPT FLUSH``
lost them: ``securecache redis-scripts`` (the migration Job runs it too). Idempotent.
"""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster

from securecache.cache import SCRIPTS


def load_scripts(url: str, *, cluster: bool = False) -> list[str]:
    """Load every script of the library on the Redis of ``url`` (each primary of a cluster);
    returns their digests."""
    client: redis.Redis | RedisCluster = (
        RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    )
    try:
        loaded = []
        for sha, script in sorted(SCRIPTS.items()):
            # A cluster client sends SCRIPT LOAD to every primary.
            digests = {client.script_load(script)}
            if digests != {sha}:
                raise RuntimeError(f"Redis computed digest(s) {digests} for script {sha}")
            loaded.append(sha)
        return loaded
    finally:
        client.close()

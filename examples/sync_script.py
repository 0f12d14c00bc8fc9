"""A plain synchronous script using securecache: a small nightly re-scoring job.

Run with the ids to re-score::

    SECURECACHE_DATABASE_URL=postgresql://... SECURECACHE_REDIS_URL=redis://... \\
        python examples/sync_script.py SEC000001 SEC000002

No asyncio in sight: ``securecache.sync.SecureCache`` has the same methods as the async
client, as plain calls. For every id the script moves momentum a step (creating a neutral
score where there is none), then reads the scores back and prints a JSON report; :func:`main`
returns the same report.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from securecache import ScoreUpdate, Settings
from securecache.sync import SecureCache

MOMENTUM_STEP = 1.5
NEUTRAL = ScoreUpdate(growth=5, value=5, quality=5, momentum=5)


def rescore(cache: SecureCache, security_ids: Sequence[str]) -> dict[str, Any]:
    """Re-score ``security_ids``; unknown ids are reported, not written."""
    known = cache.securities.get_many(security_ids)
    before = cache.scores.get_many(known)
    written: dict[str, int] = {}
    created: list[str] = []
    for security_id in known:
        score = before.get(security_id)
        if score is None:
            update = NEUTRAL
            created.append(security_id)
        else:
            update = ScoreUpdate(
                growth=score.growth,
                value=score.value,
                quality=score.quality,
                # Wrapping keeps the value in range and always changes it (a new version).
                momentum=round((score.momentum + MOMENTUM_STEP) % 10, 6),
            )
        written[security_id] = cache.scores.put(security_id, update).version
    after = cache.scores.get_many(known)
    return {
        "unknown": sorted(set(security_ids) - set(known)),
        "versions_before": {i: s.version for i, s in sorted(before.items())},
        "versions_written": dict(sorted(written.items())),
        "created": sorted(created),
        "momentum_after": {i: s.momentum for i, s in sorted(after.items())},
        "exchanges": sorted({s.exchange for s in known.values()}),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Re-score the ids in ``argv`` (default: the command line); print and return the report."""
    ids = list(sys.argv[1:] if argv is None else argv)
    if not ids:
        raise SystemExit("usage: sync_script.py SECURITY_ID [SECURITY_ID ...]")
    with SecureCache(Settings.from_env()) as cache:
        report = rescore(cache, ids)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

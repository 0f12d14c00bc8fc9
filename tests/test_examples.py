"""The runnable examples run: as subprocesses, configured only through the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from securecache import Settings

MakeSecurities = Callable[..., list[str]]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, settings: Settings, ids: Sequence[str]) -> dict[str, Any]:
    """Run ``examples/<name>`` with the test servers in its environment; its JSON output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECACHE_")}
    assert settings.database_url is not None
    assert settings.redis_url is not None
    env |= {
        "SECURECACHE_DATABASE_URL": settings.database_url,
        "SECURECACHE_REDIS_URL": settings.redis_url,
        "SECURECACHE_KEY_PREFIX": settings.key_prefix,
    }
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *ids],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def db_score(conn: psycopg.Connection[Any], security_id: str) -> tuple[int, float, float] | None:
    row = conn.execute(
        "SELECT version, growth, momentum FROM securecache.score WHERE security_id = %s",
        (security_id,),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def test_async_service_reads_lists_and_resolves_a_write_conflict(
    settings: Settings, make_securities: MakeSecurities, admin_conn: psycopg.Connection[Any]
) -> None:
    """The async example reads through the cache and retries a lost if_version race."""
    scored = make_securities(2, with_scores=True)
    bare = make_securities(1, with_scores=False)
    growths = [db_score(admin_conn, i) for i in scored]
    before = growths[0]
    assert before is not None

    out = run_example("async_service.py", settings, [*scored, *bare, "NO-SUCH-ID"])

    profiles = out["profiles"]
    assert [p and p["id"] for p in profiles] == [*scored, *bare, None]
    assert [p["score_version"] for p in profiles[:3]] == [before[0], 1, None]
    assert out["average_growth"] == sum(g[1] for g in growths if g) / 2
    expected_page = [
        r[0]
        for r in admin_conn.execute(
            "SELECT id FROM securecache.security ORDER BY id LIMIT 10"
        ).fetchall()
    ]
    assert out["first_page"] == expected_page

    adjusted = out["adjusted"]
    assert adjusted["version_before"] == before[0]
    assert adjusted["versions_written"] == [before[0] + 1, before[0] + 2]
    assert adjusted["conflicts"] >= 1  # two racing read-modify-writes: one must retry
    after = db_score(admin_conn, scored[0])
    assert after is not None
    assert adjusted["version_after"] == after[0] == before[0] + 2
    assert adjusted["growth_after"] == after[1]

    def step(growth: float, by: float) -> float:
        return round((growth + by) % 10, 6)

    either_order = {step(step(before[1], 0.5), 0.25), step(step(before[1], 0.25), 0.5)}
    assert after[1] in either_order


def test_sync_script_rescores_and_reports_what_it_wrote(
    settings: Settings, make_securities: MakeSecurities, admin_conn: psycopg.Connection[Any]
) -> None:
    """The sync example writes one new version per known id and reads them back."""
    scored = make_securities(2, with_scores=True)
    [bare] = make_securities(1, with_scores=False)
    before = {i: db_score(admin_conn, i) for i in scored}

    out = run_example("sync_script.py", settings, [*scored, bare, "NO-SUCH-ID"])

    assert out["unknown"] == ["NO-SUCH-ID"]
    assert out["created"] == [bare]
    assert out["versions_before"] == {i: v[0] for i, v in before.items() if v}
    assert out["versions_written"] == {**{i: v[0] + 1 for i, v in before.items() if v}, bare: 1}
    for security_id in [*scored, bare]:
        row = db_score(admin_conn, security_id)
        assert row is not None
        assert out["versions_written"][security_id] == row[0]
        assert out["momentum_after"][security_id] == row[2]
    assert out["momentum_after"][bare] == 5.0
    assert out["exchanges"] == ["XTST"]

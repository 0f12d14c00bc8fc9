"""A client of the internal HTTP API: batch reads, and writes that never lose an update.

Run against a running internal API (``make run`` starts one on port 8081)::

    SECURECACHE_TOKEN=... python examples/http_internal_client.py http://127.0.0.1:8081 \\
        SEC000001 SEC000002

(or set ``SECURECACHE_INTERNAL_URL`` and give only ids). The token is read from the
environment, never from the command line, where other users of the machine could see it.

It reads the scores of the ids in one request, then nudges the growth of the first one the
safe way for a read-modify-write: the PUT carries ``If-Match`` with the ETag it read, and a
412 (someone else wrote in between) means read again and retry. Two nudges run at once, so
one of them always meets a 412. It prints a JSON summary.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8081"
MAX_ATTEMPTS = 10
SCORE_FIELDS = ("growth", "value", "quality", "momentum")


class ApiError(Exception):
    """An error the API answered with, carrying its RFC 9457 problem details."""

    def __init__(self, response: httpx.Response) -> None:
        try:
            self.problem: dict[str, Any] = response.json()
        except ValueError:
            self.problem = {"status": response.status_code, "detail": response.text}
        super().__init__(f"{response.status_code}: {self.problem.get('detail')}")
        self.status = response.status_code


class InternalClient:
    """Score reads and writes with a bearer token."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        self.conflicts = 0
        """Writes refused with 412 and retried."""

    async def score(self, security_id: str) -> tuple[dict[str, Any], str] | None:
        """The score and its ETag (what If-Match takes), or None."""
        response = await self._http.get(f"/scores/{security_id}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ApiError(response)
        return response.json(), response.headers["etag"]

    async def scores(self, security_ids: Sequence[str]) -> dict[str, Any]:
        """Many scores in one request: ``{"items": [...], "missing": [...]}``."""
        response = await self._http.get("/scores", params={"ids": ",".join(security_ids)})
        if response.status_code != 200:
            raise ApiError(response)
        result: dict[str, Any] = response.json()
        return result

    async def put_score(
        self, security_id: str, values: dict[str, float], *, if_match: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Write a score; the score as committed and whether it was created."""
        headers = {} if if_match is None else {"If-Match": if_match}
        response = await self._http.put(f"/scores/{security_id}", json=values, headers=headers)
        if response.status_code not in (200, 201):
            raise ApiError(response)
        return response.json(), response.status_code == 201

    async def put_scores(self, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write many scores in one transaction: all or none."""
        response = await self._http.post("/scores/batch", json={"items": list(items)})
        if response.status_code != 200:
            raise ApiError(response)
        written: list[dict[str, Any]] = response.json()["items"]
        return written

    async def adjust(
        self, security_id: str, change: Callable[[dict[str, float]], dict[str, float]]
    ) -> dict[str, Any]:
        """Read, change, write only if nobody wrote in between; retry when somebody did."""
        for _ in range(MAX_ATTEMPTS):
            current = await self.score(security_id)
            if current is None:
                raise LookupError(f"{security_id} has no score to adjust")
            score, etag = current
            values = change({f: score[f] for f in SCORE_FIELDS})
            try:
                written, _ = await self.put_score(security_id, values, if_match=etag)
            except ApiError as exc:
                if exc.status != 412:
                    raise
                self.conflicts += 1
                continue
            return written
        raise RuntimeError(f"gave up adjusting {security_id} after {MAX_ATTEMPTS} attempts")


def nudge(values: dict[str, float]) -> dict[str, float]:
    """Growth up by 0.1, capped at 10."""
    return {**values, "growth": min(10.0, round(values["growth"] + 0.1, 6))}


async def run(
    base_url: str,
    token: str,
    security_ids: Sequence[str],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """The example's calls; ``transport`` lets tests call an app in process."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, transport=transport, timeout=10
    ) as http:
        client = InternalClient(http)
        batch = await client.scores(security_ids)
        summary: dict[str, Any] = {
            "found": [s["security_id"] for s in batch["items"]],
            "missing": batch["missing"],
        }
        if batch["items"]:
            first = batch["items"][0]
            before = first["growth"]
            # Both read the same version; the loser of the race gets a 412, reads again and
            # applies its nudge on top of the winner's.
            results = await asyncio.gather(
                client.adjust(first["security_id"], nudge),
                client.adjust(first["security_id"], nudge),
            )
            summary |= {
                "adjusted": first["security_id"],
                "growth_before": before,
                "growth_after": max(r["growth"] for r in results),
                "version_after": max(r["version"] for r in results),
                "conflicts": client.conflicts,
            }
        return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0].startswith(("http://", "https://")):
        base_url = args.pop(0)
    else:
        base_url = os.environ.get("SECURECACHE_INTERNAL_URL", DEFAULT_URL)
    token = os.environ.get("SECURECACHE_TOKEN")
    if not token or not args:
        sys.exit("usage: SECURECACHE_TOKEN=... http_internal_client.py [BASE_URL] ID...")
    summary = asyncio.run(run(base_url, token, args))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()

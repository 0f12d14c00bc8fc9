"""A client of the public HTTP API: pages through securities and revalidates with ETags.

Run against a running public API (``make run`` starts one on port 8080)::

    python examples/http_public_client.py http://127.0.0.1:8080 SEC000001 SEC000002

(or set ``SECURECACHE_PUBLIC_URL`` and give only ids). It walks the listing page by page,
fetches each id's security and score, fetches them again with ``If-None-Match`` (the server
answers 304 without a body while nothing changed), and prints a JSON summary.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"


class ApiError(Exception):
    """An error the API answered with, carrying its RFC 9457 problem details."""

    def __init__(self, response: httpx.Response) -> None:
        try:
            self.problem: dict[str, Any] = response.json()
        except ValueError:
            self.problem = {"status": response.status_code, "detail": response.text}
        super().__init__(f"{response.status_code}: {self.problem.get('detail')}")
        self.status = response.status_code


class PublicClient:
    """Security and Score reads that remember ETags, so repeated reads cost a 304."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        self._cached: dict[str, tuple[str, Any]] = {}
        self.not_modified = 0
        """Reads answered 304: the copy held was still current."""

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET a JSON resource; None for 404; a 304 serves the copy held for that ETag."""
        key = str(self._http.build_request("GET", path, params=params).url)
        held = self._cached.get(key)
        headers = {"If-None-Match": held[0]} if held else {}
        response = await self._http.get(path, params=params, headers=headers)
        if response.status_code == 304 and held is not None:
            self.not_modified += 1
            return held[1]
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ApiError(response)
        body = response.json()
        if "etag" in response.headers:
            self._cached[key] = (response.headers["etag"], body)
        return body

    async def security(self, security_id: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._get(f"/securities/{security_id}")
        return result

    async def score(self, security_id: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._get(f"/securities/{security_id}/score")
        return result

    async def securities(self, page_size: int = 100) -> AsyncIterator[dict[str, Any]]:
        """Every security in id order, one page (one request) at a time."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cursor is not None:
                params["cursor"] = cursor
            page = await self._get("/securities", params)
            for security in page["items"]:
                yield security
            cursor = page["next_cursor"]
            if cursor is None:
                return


async def run(
    base_url: str,
    security_ids: Sequence[str],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    page_size: int = 100,
) -> dict[str, Any]:
    """The example's walk through the API; ``transport`` lets tests call an app in process."""
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=10) as http:
        client = PublicClient(http)
        listed = [s["id"] async for s in client.securities(page_size)]
        profiles: dict[str, Any] = {}
        for _ in range(2):  # the second round is answered with 304s
            for security_id in security_ids:
                security, score = (
                    await client.security(security_id),
                    await client.score(security_id),
                )
                profiles[security_id] = {
                    "symbol": None if security is None else security["symbol"],
                    "growth": None if score is None else score["growth"],
                }
        return {
            "listed": len(listed),
            "in_order": listed == sorted(listed),
            "profiles": profiles,
            "not_modified": client.not_modified,
        }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0].startswith(("http://", "https://")):
        base_url = args.pop(0)
    else:
        base_url = os.environ.get("SECURECACHE_PUBLIC_URL", DEFAULT_URL)
    summary = asyncio.run(run(base_url, args))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()

"""Rate limits of a public key are per install; of a secret key, per key (real server)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import AppKeys
from tests.support.harness import ServerProcess, running_server
from tests.support.helpers import create_job

RATE = 1.0  # per second, per budget
BURST = 3
INSTALLS = 1000
POLL_SECONDS = 5.0  # what both mobile SDKs do
ROUNDS = 2


@pytest.fixture(scope="module")
def tight_server(database_url: str, workdir: Path) -> Iterator[ServerProcess]:
    env = {"SEENN_RATE_LIMIT_PER_SECOND": str(RATE), "SEENN_RATE_LIMIT_BURST": str(BURST)}
    with running_server(database_url, workdir / "logs-install-budgets", env=env) as server:
        yield server


def install_address(n: int) -> dict[str, str]:
    """The install's address as the trusted proxy in front of the server reports it."""
    return {"X-Forwarded-For": f"10.{n // 250}.{n % 250}.7"}


async def test_a_thousand_installs_polling_every_5_s_with_one_public_key_get_no_429(
    tight_server: ServerProcess, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    """1,000 installs (distinct client addresses behind the trusted proxy) each poll
    ``GET /v1/jobs/{id}`` every 5 s, as the polling SDK does, for two rounds at random
    phases: 2,000 requests in about 10 s with the one ``pk_`` key.

    The server's limit is configured tiny (1/s, burst 3) so the test shows whose budget a
    request draws on: one budget for the key would refuse all but a handful of these
    requests, while each install uses 0.2/s of its own budget and never sees a 429. The
    defaults (100/s, burst 2,000, per install) leave far more room than this.
    """
    jobs = [await create_job(client, userId=f"install_{i}") for i in range(20)]
    rng = random.Random(11)
    phases = [rng.uniform(0, POLL_SECONDS) for _ in range(INSTALLS)]
    limits = httpx.Limits(max_connections=64)
    headers = {"Authorization": f"Bearer {keys.public}"}
    async with httpx.AsyncClient(
        base_url=f"{tight_server.url}/v1", headers=headers, limits=limits, timeout=60
    ) as app:

        async def install(n: int) -> list[int]:
            statuses = []
            await asyncio.sleep(phases[n])
            for _ in range(ROUNDS):
                response = await app.get(
                    f"/jobs/{jobs[n % len(jobs)]['id']}", headers=install_address(n)
                )
                statuses.append(response.status_code)
                await asyncio.sleep(POLL_SECONDS)
            return statuses

        results = await asyncio.gather(*(install(n) for n in range(INSTALLS)))
        seen = Counter(status for statuses in results for status in statuses)
        assert seen == {200: INSTALLS * ROUNDS}, seen

        # The limit is live: one install polling far faster than every 5 s is refused.
        burst = [
            await app.get(f"/jobs/{jobs[0]['id']}", headers=install_address(5000))
            for _ in range(BURST + 2)
        ]
        assert [r.status_code for r in burst][:BURST] == [200] * BURST
        assert burst[-1].status_code == 429
        assert burst[-1].json()["error"]["code"] == "RATE_LIMITED"


async def test_a_public_key_is_budgeted_per_user_id_and_a_secret_key_per_key(
    tight_server: ServerProcess, keys: AppKeys
) -> None:
    async with httpx.AsyncClient(base_url=f"{tight_server.url}/v1", timeout=30) as c:
        public = {"Authorization": f"Bearer {keys.public}", **install_address(9000)}
        lists = [await c.get("/jobs", params={"userId": "ua"}, headers=public) for _ in range(4)]
        assert [r.status_code for r in lists] == [200, 200, 200, 429]
        # Same address, another userId: another install, its own budget.
        other = await c.get("/jobs", params={"userId": "ub"}, headers=public)
        assert other.status_code == 200
        assert other.headers["X-RateLimit-Remaining"] == str(BURST - 1)

        # A secret key is one server wherever its requests come from: one budget.
        statuses = []
        for n in range(4):
            secret = {"Authorization": f"Bearer {keys.secret}", **install_address(9100 + n)}
            statuses.append(
                (await c.get("/jobs", params={"userId": "ua"}, headers=secret)).status_code
            )
        assert statuses == [200, 200, 200, 429]

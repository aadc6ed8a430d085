"""A real Prometheus scrapes the router and the edges with the shipped scrape config.

The config is data/prometheus/prometheus.yml with only the targets (matched by their node
label), the intervals (1 s) and the rule file path changed; storage lives in the test's
tmp directory; no remote write and no alertmanager, so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from cdn.config import HostPort
from cdnlab.loopback import SUBNETS, Cdn, free_port, poll, start_cdn
from cdnlab.supervisor import ChildSpec, Supervisor
from tests.e2e import prometheus_config, which
from tests.test_assets import dashboard_exprs, rule_exprs

# One CDN and one Prometheus serve every test here.
pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="module")]
READY_LINE = "Server is ready to receive web requests"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cdn(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cdn]:
    async with start_cdn(tmp_path_factory.mktemp("cdn")) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def prometheus(tmp_path_factory: pytest.TempPathFactory, cdn: Cdn) -> AsyncIterator[str]:
    tmp_path = tmp_path_factory.mktemp("prometheus")
    binary = which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package prometheus; `make test` installs it)")
    workdir = tmp_path
    edges = {e.name: e.control for e in cdn.plan.edges}
    config = workdir / "prometheus.yml"
    config.write_text(prometheus_config(1.0, cdn.plan.control, edges))
    listen = HostPort("127.0.0.1", free_port("127.0.0.1"))
    argv = (
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={listen}",
    )
    supervisor = Supervisor(workdir)
    try:
        await supervisor.start(ChildSpec("prometheus", argv, READY_LINE), timeout_s=30)
        yield f"http://{listen}"
    finally:
        await supervisor.stop_all()


async def instant(session: aiohttp.ClientSession, base: str, promql: str) -> dict[str, Any]:
    async with session.get(f"{base}/api/v1/query", params={"query": promql}) as response:
        body: dict[str, Any] = await response.json()
    assert body["status"] == "success", (promql, body)
    return body["data"]


async def _traffic(cdn: Cdn, session: aiohttp.ClientSession) -> None:
    for subnet in SUBNETS.values():
        for ip in await cdn.resolve(subnet):
            async with session.get(f"http://{ip}:{cdn.plan.content_port}/img/cat.jpg") as r:
                await r.read()


async def test_prometheus_scrapes_router_and_edges_and_sees_answers(
    prometheus: str, cdn: Cdn
) -> None:
    async with aiohttp.ClientSession() as session:
        await _traffic(cdn, session)
        data = await poll(
            lambda: instant(session, prometheus, "sum(georouter_answers_total) > 0"),
            lambda d: len(d["result"]) == 1,
            20,
            "answers visible in Prometheus",
        )
        assert float(data["result"][0]["value"][1]) >= len(SUBNETS)
        up = await poll(
            lambda: instant(session, prometheus, "sum by (job) (up)"),
            lambda d: (
                {r["metric"]["job"]: r["value"][1] for r in d["result"]}
                == {"georouter": "1", "edge": "6"}
            ),
            20,
            "every target up",
        )
        assert up["resultType"] == "vector"
        hits = await instant(session, prometheus, 'edge_requests_total{node="edge-eu-1"}')
        assert hits["result"], "edge series carry the shipped node label"


async def test_every_rule_and_panel_query_parses_in_real_prometheus(prometheus: str) -> None:
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *(instant(session, prometheus, q) for q in rule_exprs() + dashboard_exprs())
        )
    assert len(results) == len(rule_exprs()) + len(dashboard_exprs())


async def test_alert_rules_are_loaded(prometheus: str) -> None:
    url = f"{prometheus}/api/v1/rules"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        groups = (await response.json())["data"]["groups"]
    names = {rule["name"] for group in groups for rule in group["rules"]}
    assert {"RegionWithoutHealthyNodes", "FailOpenAnswers", "EdgeOriginErrors"} <= names

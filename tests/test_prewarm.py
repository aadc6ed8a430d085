"""Pre-warming, the pure parts and one edge in-process: the messages and the report's size
bound, the edge's queue, outcome rules and hot-set sketch, the router's task log, quotas
and popularity view; the edge's fetchers at their concurrency bound and waiting while
the edge is busy (real sockets)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from cdn.errors import ReportError
from cdn.prewarm import (
    MAX_HOT,
    MAX_HOT_URL_CHARS,
    MAX_PROGRESS_ERRORS,
    MAX_PROGRESS_TASKS,
    HotObject,
    PrewarmError,
    PrewarmOrder,
    PrewarmProgress,
)
from cdn.purge import PurgeError
from cdn.report import MAX_ACKS, MAX_REPORT_BYTES, LoadReport
from edge import prewarm as prewarm_module
from edge.prewarm import HotSet, PrewarmQueue, classify, may_fetch
from edge.server import EdgeServer
from georouter.prewarm import (
    MAX_POPULARITY_TASKS,
    MIN_ID_PERIOD_S,
    QUOTA_WINDOW_S,
    NodeProgress,
    Popularity,
    PrewarmLimits,
    PrewarmLog,
    PrewarmTask,
    popularity_task_id,
    quota_refusal,
)
from georouter.prewarm_command import prewarm_command
from georouter.state import ControlState, StateFile
from tests.origin_app import metric, poll, running_edge

HOST = "cdn.example.com"


def url(n: int) -> str:
    return f"http://{HOST}/img/{n}.png"


def order(task_id: str, n: int) -> PrewarmOrder:
    return PrewarmOrder(task_id, tuple(url(i) for i in range(n)))


# --- messages -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ({"id": "t", "urls": []}, "non-empty"),
        ({"id": "t", "urls": ["/img/a.png"]}, "absolute"),
        ({"id": "t", "urls": [url(1)], "site": "other.example.com"}, "not the host"),
        ({"id": "", "urls": [url(1)]}, "task id"),
        ({"id": "t", "urls": [url(1)], "more": 1}, "expected"),
        # RFC 3986 §2: no controls or spaces; a host and port that parse (§3.2.2, §3.2.3)
        ({"id": "t", "urls": ["http://a\u0000b/x"]}, "printable ASCII"),
        ({"id": "t", "urls": ["http://a b/x"]}, "printable ASCII"),
        ({"id": "t", "urls": ["http://caf\u00e9.example/x"]}, "printable ASCII"),
        ({"id": "t", "urls": ["http://[::1/x"]}, "cannot parse"),
        ({"id": "t", "urls": ["http://a:99999/x"]}, "cannot parse"),
        ({"id": "t", "urls": ["http://a:b/x"]}, "cannot parse"),
    ],
)
def test_bad_orders_are_named(raw: object, error: str) -> None:
    with pytest.raises(PurgeError, match=error):  # PrewarmError is a PurgeError
        PrewarmOrder.from_dict(raw)


def test_an_order_keeps_each_url_once_and_in_order() -> None:
    parsed = PrewarmOrder.from_dict({"id": "t", "urls": [url(2), url(1), url(2)]})
    assert parsed.urls == (url(2), url(1))
    assert PrewarmOrder.from_dict(parsed.to_dict()) == parsed


def test_too_many_urls_in_an_order_are_refused() -> None:
    with pytest.raises(PrewarmError, match="at most 3"):
        PrewarmOrder.from_dict({"id": "t", "urls": [url(i) for i in range(4)]}, max_urls=3)


def test_the_largest_possible_report_fits_the_report_limit() -> None:
    """Every new report field is bounded: all of them at their limits still decode."""
    hot = tuple(
        HotObject(f"http://{HOST}/" + "x" * (MAX_HOT_URL_CHARS - 27) + f"{i:04d}", 2**40)
        for i in range(MAX_HOT)
    )
    errors = tuple((10_000 + i, 504) for i in range(MAX_PROGRESS_ERRORS))
    progress = tuple(
        PrewarmProgress("0" * 36 + str(i), 10**6, 10**6, 10**6, 10**6, errors)
        for i in range(MAX_PROGRESS_TASKS)
    )
    report = LoadReport(
        "edge-eu-1", 2**40, "up", 10**6, 1e9, 1e9, 1.5, 0.99,
        acks=tuple("a" * 36 for _ in range(MAX_ACKS)), tunnels=10**6, hot=hot, prewarm=progress,
    )  # fmt: skip
    body = report.to_json()
    assert len(body) <= MAX_REPORT_BYTES
    assert all(len(h.url) == MAX_HOT_URL_CHARS for h in hot)
    assert LoadReport.from_json(body) == report


def test_a_report_with_too_many_hot_objects_is_refused() -> None:
    raw = json.loads(LoadReport("e", 1, "up", 0, 0.0, 1.0, 0.0, 0.0).to_json())
    raw["hot"] = [[url(i), 1] for i in range(MAX_HOT + 1)]
    with pytest.raises(ReportError, match="hot"):
        LoadReport.from_json(json.dumps(raw).encode())


def test_reports_without_the_new_fields_decode_as_before() -> None:
    plain = LoadReport("e", 1, "up", 0, 0.0, 1.0, 0.0, 0.0)
    assert b"hot" not in plain.to_json() and b"prewarm" not in plain.to_json()
    assert LoadReport.from_json(plain.to_json()) == plain


# --- the edge's decisions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cache_status", "expected"),
    [
        (200, "georouter-edge; hit; ttl=50", ("cached", 200)),
        (200, "georouter-edge; fwd=miss; fwd-status=200; stored", ("fetched", 200)),
        (200, "georouter-edge; fwd=stale; fwd-status=304", ("cached", 200)),  # revalidated
        (200, "georouter-edge; fwd=miss; fwd-status=200", ("failed", 200)),  # not stored
        (404, "georouter-edge; fwd=miss; fwd-status=404; stored", ("failed", 404)),
        (502, "georouter-edge; fwd=miss; detail=origin-connect", ("failed", 502)),
        # A shield's member comes first; this edge's own (the last) decides (RFC 9211 §2).
        (200, "georouter-edge; hit, georouter-edge; fwd=miss; fwd-status=200; stored",
         ("fetched", 200)),
        (200, "georouter-edge; fwd=miss; fwd-status=503, georouter-edge; hit", ("cached", 200)),
        (200, None, ("failed", 200)),
    ],
)  # fmt: skip
def test_outcome_comes_from_this_edge_s_cache_status_member_rfc9211_2(
    status: int, cache_status: str | None, expected: tuple[str, int]
) -> None:
    assert classify(status, cache_status) == expected


def test_prewarm_waits_while_the_edge_is_busy() -> None:
    assert may_fetch(0.69, 0.7) and not may_fetch(0.7, 0.7) and not may_fetch(2.0, 0.7)


def test_queue_takes_oldest_task_first_and_counts_progress() -> None:
    queue = PrewarmQueue()
    assert queue.admit(order("a", 2), 0.0) == "queued"
    assert queue.admit(order("b", 1), 0.0) == "queued"
    assert queue.admit(order("a", 2), 1.0) == "duplicate"  # another router sent it too
    jobs = [queue.take() for _ in range(4)]
    assert [(j.task, j.index) for j in jobs if j is not None] == [("a", 0), ("a", 1), ("b", 0)]
    assert jobs[3] is None and queue.depth == 3
    first, second, third = (j for j in jobs if j is not None)
    queue.record(first, "fetched", 200, 2.0)
    queue.record(second, "failed", 404, 2.0)
    assert queue.get("a") == PrewarmProgress("a", fetched=1, failed=1, errors=((1, 404),))
    assert queue.get("b") == PrewarmProgress("b", queued=1)
    queue.record(third, "cached", 200, 3.0)
    assert [p.id for p in queue.progress(3.0)] == ["b", "a"]  # the latest change first
    assert queue.progress(100.0) == ()  # old news is no longer repeated
    assert queue.depth == 0


def test_an_order_that_does_not_fit_the_queue_is_refused_whole() -> None:
    queue = PrewarmQueue(max_urls=5)
    assert queue.admit(order("a", 3), 0.0) == "queued"
    assert queue.admit(order("b", 3), 0.0) == "full"
    assert queue.depth == 3 and queue.get("b") is None


@given(st.lists(st.integers(0, 40), min_size=1, max_size=400))
def test_space_saving_keeps_bounded_counters_and_every_heavy_hitter(stream: list[int]) -> None:
    hot = HotSet(0.0, capacity=16)
    for n in stream:
        hot.add(url(n), 0.0)
    assert len(hot) <= 16
    counts = Counter(stream)
    top = {h.url: h.count for h in hot.top(0.0, k=16)}
    # Space-Saving: any item seen more than N / capacity times is kept, never undercounted.
    for n, c in counts.items():
        if c > len(stream) / 16:
            assert top.get(url(n), 0) >= c


class _CountingPattern:
    """Stands in for edge.prewarm's URL pattern and counts its uses."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.calls = 0

    def fullmatch(self, text: str) -> re.Match[str] | None:
        self.calls += 1
        return self.pattern.fullmatch(text)


def test_a_url_already_counted_is_not_checked_again_on_the_hit_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every GET answer counts here: a repeated URL costs a dict lookup, not the check.
    counting = _CountingPattern(prewarm_module._PLAIN)
    monkeypatch.setattr(prewarm_module, "_PLAIN", counting)
    hot = HotSet(0.0, capacity=4)
    for _ in range(100):
        hot.add(url(1), 1.0)
    for n in range(2, 50):  # a long tail of URLs seen once each: takeovers
        hot.add(url(n), 2.0)
    assert counting.calls == 1 + 48
    assert hot.top(2.0)[0] == HotObject(url(1), 100)


def test_hot_counts_halve_with_time_and_long_urls_are_not_counted() -> None:
    hot = HotSet(0.0)
    for _ in range(8):
        hot.add(url(1), 0.0)
    hot.add("http://x/" + "y" * MAX_HOT_URL_CHARS, 0.0)
    hot.add('http://x/"quoted"', 0.0)  # would grow when JSON-escaped
    hot.add("http://x/caf\u00e9", 0.0)
    assert hot.top(0.0) == (HotObject(url(1), 8),)
    assert hot.top(120.0) == (HotObject(url(1), 2),)  # two half-lives


# --- the router's bookkeeping -------------------------------------------------------------------


def task(
    task_id: str, urls: int, created: float, nodes: tuple[str, ...] = ("e1", "e2")
) -> PrewarmTask:
    return PrewarmTask(
        task_id, "eu", tuple(url(i) for i in range(urls)), "api", created, None,
        {n: NodeProgress() for n in nodes},
    )  # fmt: skip


def test_popularity_tasks_cannot_push_api_tasks_out_of_the_quota_window() -> None:
    # A flapping node makes popularity tasks fast; the log keeps only the latest of them,
    # so the API tasks the daily quota counts stay (and the state file stays small).
    log = PrewarmLog()
    log.add(task("api-1", 40, 0.0))
    for i in range(MAX_POPULARITY_TASKS + 50):
        made = task(f"pop-{i:05d}", 2, 1.0 + i)
        log.add(PrewarmTask(made.id, made.region, made.urls, "popularity", made.created_at,
                            None, made.nodes))  # fmt: skip
    assert log.prune(now=1000.0) == 50
    assert log.get("api-1") is not None and log.get("pop-00000") is None
    assert log.urls_in_window(1000.0) == 40


def test_log_takes_reported_progress_and_counts_only_news() -> None:
    log = PrewarmLog()
    t, created = log.add(task("t1", 3, 0.0))
    assert created and not log.add(task("t1", 3, 5.0))[1]
    assert log.deliver("t1", "e1", "sent") and not log.deliver("t1", "e1", "failed: late")
    news = log.report("e2", [PrewarmProgress("t1", fetched=1, queued=2)])
    assert news == {"fetched": 1, "cached": 0, "failed": 0}
    news = log.report("e2", [PrewarmProgress("t1", fetched=2, failed=1, errors=((2, 502),))])
    assert news == {"fetched": 1, "cached": 0, "failed": 1}
    assert t.nodes["e2"].delivery == "sent"  # its report says it has the task
    view = t.to_dict()["nodes"]
    assert view["e2"]["state"] == "done" and view["e2"]["errors"] == [
        {"url": url(2), "status": 502}
    ]
    assert view["e1"]["state"] == "queued" and view["e1"]["queued"] == 3
    assert log.report("e9", [PrewarmProgress("t1", fetched=9)]) == dict.fromkeys(news, 0)


def test_tasks_survive_the_state_file_round_trip() -> None:
    t = task("t1", 2, 10.0)
    t.nodes["e1"] = NodeProgress("sent", PrewarmProgress("t1", fetched=1, queued=1))
    again = PrewarmTask.from_state(json.loads(json.dumps(t.to_state())))
    assert again == t


def test_quotas_bound_urls_per_task_and_per_sliding_day() -> None:
    limits = PrewarmLimits(max_urls_per_task=3, max_urls_per_day=5)
    log = PrewarmLog()
    assert quota_refusal(log, 4, limits, 0.0) is not None  # per task
    log.add(task("t1", 3, 0.0))
    assert quota_refusal(log, 2, limits, 1.0) is None
    log.add(task("t2", 2, 1.0))
    assert "per day" in (quota_refusal(log, 1, limits, 2.0) or "")
    assert quota_refusal(log, 3, limits, QUOTA_WINDOW_S + 0.5) is None  # t1 left the window
    popular = task("p", 3, 2.0)
    popular.origin = "popularity"
    log.add(popular)
    assert log.urls_in_window(2.0) == 5  # popularity tasks count against no quota


def test_popularity_sends_the_region_hot_set_to_the_nodes_that_take_its_clients() -> None:
    pop = Popularity()
    pop.note("e1", "eu", (HotObject(url(1), 10), HotObject(url(2), 3)), 0.0)
    pop.note("e2", "eu", (HotObject(url(2), 9),), 0.0)
    pop.note("n1", "na", (HotObject(url(9), 99),), 0.0)
    assert pop.hot_set("eu", 1.0, 2) == (url(2), url(1))  # 12 > 10: summed over the region
    assert pop.hot_set("eu", 1000.0, 2) == ()  # nobody heard lately
    assert pop.changes({"eu": frozenset({"e1", "e2"})}) == []  # the first view
    (left,) = pop.changes({"eu": frozenset({"e2"})})
    assert (left.targets, left.left, left.joined) == (("e2",), ("e1",), ())
    assert pop.hot_set_for(left, 1.0, 2) == (url(1), url(2))  # what e1's clients asked for
    (joined,) = pop.changes({"eu": frozenset({"e1", "e2"})})
    assert (joined.targets, joined.joined) == (("e1",), ("e1",))
    assert pop.hot_set_for(joined, 1.0, 2) == (url(2), url(1))  # the region's
    assert pop.changes({"eu": frozenset({"e1", "e2"})}) == []
    assert pop.due("eu", 0.0, 5.0) and not pop.due("eu", 4.0, 5.0) and pop.due("eu", 5.0, 5.0)


# --- one edge, in-process -----------------------------------------------------------------------


def fetched(edge: EdgeServer) -> float:
    return metric(edge.metrics, "edge_prewarm_urls_total", {"outcome": "fetched"})


class CountingOrigin:
    """An origin that records how many requests it serves at once (its peak)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.paths: list[str] = []
        self.marked = 0  # requests that carried the edge's own pre-warm field

    async def handle(self, request: web.Request) -> web.Response:
        self.now += 1
        self.peak = max(self.peak, self.now)
        self.paths.append(request.path)
        self.marked += "Edge-Prewarm" in request.headers
        try:
            await asyncio.sleep(0.05)  # a slow origin, so that fetches overlap if they can
        finally:
            self.now -= 1
        return web.Response(body=b"x" * 100, headers={"Cache-Control": "max-age=600"})


async def post_order(control: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{control}/api/v1/prewarm", json=body, headers={"Authorization": "Bearer t0ken"}
        ) as response,
    ):
        return response.status, await response.json()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("concurrency", [1, 3])
async def test_prewarm_fetches_at_most_prewarm_concurrency_at_once(concurrency: int) -> None:
    origin = CountingOrigin()
    app = web.Application()
    app.router.add_get("/{tail:.*}", origin.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with running_edge(base, prewarm_concurrency=concurrency) as edge:
            assert edge.control is not None
            control = f"http://{edge.control}"
            urls = [f"http://{HOST}/p/{i}" for i in range(12)]
            status, body = await post_order(control, {"id": "task-1", "urls": urls})
            assert status == 202 and body["result"] == "queued"
            status, body = await post_order(control, {"id": "task-1", "urls": urls})
            assert status == 200 and body["result"] == "duplicate"
            await poll(lambda: fetched(edge) == 12, 30.0)
            assert origin.peak == concurrency
            assert sorted(origin.paths) == sorted(f"/p/{i}" for i in range(12))
            assert origin.marked == 0  # the edge's secret stays on the edge (RFC 9110 §7.6)
            progress = edge.prewarmer.queue.get("task-1")
            assert progress == PrewarmProgress("task-1", fetched=12)
            # Background work is not client load and not popularity.
            assert edge.snapshot().rps == 0 and edge.prewarmer.hot.top(time.monotonic()) == ()
    finally:
        await runner.cleanup()


@pytest.mark.timeout(60)
async def test_a_url_the_fetch_cannot_use_fails_alone_and_fetching_goes_on() -> None:
    origin = CountingOrigin()
    app = web.Application()
    app.router.add_get("/{tail:.*}", origin.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with running_edge(base, prewarm_concurrency=1) as edge:
            prewarmer = edge.prewarmer
            # Queued directly (the order check refuses it): the HTTP client raises ValueError.
            bad = PrewarmOrder("bad", ("http://a\u0000b/x", url(1)))
            assert prewarmer.queue.admit(bad, time.monotonic()) == "queued"
            prewarmer._work.set()
            await poll(lambda: fetched(edge) == 1, 30.0)
            progress = prewarmer.queue.get("bad")
            assert progress is not None
            assert (progress.fetched, progress.failed, progress.queued) == (1, 1, 0)
            assert prewarmer.running == 0
    finally:
        await runner.cleanup()


@pytest.mark.timeout(60)
async def test_prewarm_waits_while_the_edge_is_busy_and_goes_on_after() -> None:
    origin = CountingOrigin()
    app = web.Application()
    app.router.add_get("/{tail:.*}", origin.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        # capacity 1 rps: three client requests put utilization at or above 0.5 for a while.
        async with running_edge(base, capacity_rps=1.0, prewarm_max_utilization=0.5) as edge:
            assert edge.control is not None and edge.content is not None
            async with aiohttp.ClientSession() as session:
                for i in range(3):
                    async with session.get(f"http://{edge.content}/client/{i}") as response:
                        await response.read()
            assert edge.snapshot().utilization >= 0.5
            status, _ = await post_order(
                f"http://{edge.control}", {"id": "busy", "urls": [f"http://{HOST}/p/1"]}
            )
            assert status == 202
            await poll(lambda: metric(edge.metrics, "edge_prewarm_busy_waits_total") >= 1, 10.0)
            assert "/p/1" not in origin.paths or edge.snapshot().utilization < 0.5
            # The window moves on, utilization falls and the URL is fetched.
            await poll(lambda: fetched(edge) == 1, 20.0)
    finally:
        await runner.cleanup()


@settings(max_examples=50)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=6), st.integers(0, 20))
def test_queue_depth_is_what_was_admitted_and_not_yet_recorded(sizes: list[int], done: int) -> None:
    queue = PrewarmQueue(max_urls=15)
    admitted = sum(len(order(f"t{i}", n).urls) for i, n in enumerate(sizes)
                   if queue.admit(order(f"t{i}", n), 0.0) == "queued")  # fmt: skip
    assert admitted <= 15
    jobs = [j for j in (queue.take() for _ in range(done)) if j is not None]
    for job in jobs:
        queue.record(job, "fetched", 200, 1.0)
    assert queue.depth == admitted - len(jobs)


@pytest.mark.timeout(60)
async def test_an_order_is_bounded_and_needs_the_token() -> None:
    async with running_edge("http://127.0.0.1:9") as edge:
        assert edge.control is not None
        control = f"http://{edge.control}"
        async with aiohttp.ClientSession() as session:
            big = b'{"id": "t", "urls": ["' + b"x" * (3 * 1024 * 1024) + b'"]}'
            headers = {"Authorization": "Bearer t0ken", "Content-Type": "application/json"}
            async with session.post(f"{control}/api/v1/prewarm", data=big, headers=headers) as r:
                assert r.status == 400 and "larger than" in (await r.json())["error"]
            async with session.post(f"{control}/api/v1/prewarm", json={"id": "t"}) as r:
                assert r.status == 401
        status, body = await post_order(control, {"id": "t", "urls": ["/relative"]})
        assert status == 400 and "absolute" in str(body["error"])


def test_the_state_file_keeps_prewarm_tasks_with_their_progress(tmp_path: Path) -> None:
    t = task("t1", 2, 10.0)
    t.nodes["e2"] = NodeProgress("failed: status 503")
    t.nodes["e1"] = NodeProgress("sent", PrewarmProgress("t1", fetched=1, failed=1,
                                                          errors=((1, 404),)))  # fmt: skip
    files = StateFile(tmp_path)
    files.save(ControlState(prewarms=(t,)))
    assert files.load().prewarms == (t,)


@given(
    st.sampled_from(["eu", "na"]),
    st.lists(st.sampled_from(["e1", "e2", "e3"]), min_size=1, unique=True),
    st.floats(0, 2e9),
    st.sampled_from([0.0, 0.5, 5.0, 60.0]),
)
def test_a_popularity_task_id_is_the_same_on_every_router_for_one_change_and_period(
    region: str, targets: list[str], now_s: float, interval_s: float
) -> None:
    """Every router makes the popularity task for one change: one id makes it one task."""
    period_s = max(interval_s, MIN_ID_PERIOD_S)
    start_s = (now_s // period_s) * period_s
    task_id = popularity_task_id(region, targets, now_s, interval_s)
    assert task_id == popularity_task_id(region, reversed(targets), start_s, interval_s)
    assert task_id != popularity_task_id(region, targets, start_s + period_s, interval_s)
    assert task_id != popularity_task_id(region, [*targets, "x"], now_s, interval_s)
    assert int(task_id[:8] + task_id[9:13], 16) == int(start_s * 1000)  # UUIDv7, RFC 9562 §5.7
    PrewarmOrder.from_dict({"id": task_id, "urls": [url(1)]})  # a valid task id


async def test_georouter_prewarm_fails_cleanly_on_an_answer_without_a_task_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`georouter prewarm --wait` polled /api/v1/prewarm/{id} with the answer's "id": an
    answer without one raised KeyError (a traceback) instead of a one-line failure."""
    unfinished = {"nodes": {"edge-eu-1": {"delivery": "pending"}}}

    async def accept(request: web.Request) -> web.Response:
        return web.json_response(unfinished)

    app = web.Application()
    app.router.add_post("/api/v1/prewarm", accept)
    config = Path(__file__).resolve().parent.parent / "georouter" / "data" / "cdn.toml"
    async with TestServer(app, host="127.0.0.1") as server:
        where = f"127.0.0.1:{server.port}"
        body = {"region": "eu", "urls": [url(1)]}
        code = await asyncio.to_thread(prewarm_command, config, body, where, 5.0)
    assert code == 1 and "no task id" in capsys.readouterr().err


def test_the_log_knows_which_tasks_each_node_was_not_sent() -> None:
    log = PrewarmLog([task("t1", 1, 0.0), task("t2", 1, 1.0)])
    assert [t.id for t in log.owed("e1")] == ["t1", "t2"]
    log.deliver("t1", "e1", "failed: ClientConnectorError")
    assert [t.id for t in log.owed("e1")] == ["t1", "t2"]  # still owed
    log.deliver("t1", "e1", "sent")
    log.report("e1", [PrewarmProgress("t2", fetched=1, cached=0, failed=0, queued=0)])
    assert log.owed("e1") == [] and [t.id for t in log.owed("e2")] == ["t1", "t2"]
    log.prune(now=10 * QUOTA_WINDOW_S)
    assert log.owed("e2") == []

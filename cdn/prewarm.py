"""Pre-warming as router and edge exchange it: one definition for sender and receiver.

A router sends a task to each target edge at PREWARM_PATH (POST, its token): an id, the
absolute URLs to fetch and an optional site. The edge queues them, fetches each through
its own miss path (HEAD to its content port: a miss fills the cache with a GET, a hit
costs nothing) and reports how each ended in its next load reports, as a
PrewarmProgress per recent task: counts of URLs fetched (the edge stored them now),
cached (already fresh there), failed (with the status the fetch got, the origin's own
when it answered) and still queued. Edges also report their current top objects
(HotObject) so that routers can pre-warm by popularity. Every list is bounded, so a
report stays under cdn.report.MAX_REPORT_BYTES.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from cdn.errors import ReportError
from cdn.purge import MAX_ID_CHARS, PurgeError, url_host

PREWARM_PATH = "/api/v1/prewarm"  # on the edge's control port: POST a PrewarmOrder
Outcome = Literal["fetched", "cached", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("fetched", "cached", "failed")
MAX_URL_CHARS = 2048  # as a purge selector
MAX_ORDER_URLS = 1000  # the hard ceiling of [prewarm] max_urls_per_task
MAX_HOT = 32  # top objects per report
MAX_HOT_URL_CHARS = 256  # a longer URL is not counted as hot (keeps the report small)
MAX_PROGRESS_TASKS = 4  # task progress entries per report
MAX_PROGRESS_ERRORS = 8  # failed URLs named per task and report (the rest only counted)


class PrewarmError(PurgeError):
    """A pre-warm request or message is malformed (the sender's fault: HTTP 400)."""


@dataclass(frozen=True, slots=True)
class PrewarmOrder:
    """What an edge is asked to fetch."""

    id: str
    urls: tuple[str, ...]
    site: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "urls": list(self.urls)}
        if self.site is not None:
            out["site"] = self.site
        return out

    @classmethod
    def from_dict(cls, raw: Any, *, max_urls: int = MAX_ORDER_URLS) -> PrewarmOrder:
        if not isinstance(raw, dict) or set(raw) - {"id", "urls", "site"}:
            raise PrewarmError('expected {"id", "urls", "site"?}')
        task_id = raw.get("id")
        if not isinstance(task_id, str) or not 0 < len(task_id) <= MAX_ID_CHARS:
            raise PrewarmError(f"id: expected a task id, got {task_id!r}")
        site = valid_site(raw.get("site"))
        return cls(task_id, valid_urls(raw.get("urls"), site, max_urls), site)


def valid_site(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 255 or "/" in value:
        raise PrewarmError(f"site: expected a host name, got {value!r}")
    return value.lower()


def valid_urls(value: Any, site: str | None, max_urls: int) -> tuple[str, ...]:
    """Absolute http(s) URLs like the purge url selector, at most max_urls, each once;
    printable ASCII (RFC 3986 §2: no controls, no spaces) with a host and port that
    parse, as the edge's fetch will need them; with a site, each URL's host must be it."""
    if not isinstance(value, list) or not value:
        raise PrewarmError("urls: expected a non-empty list of absolute URLs")
    if len(value) > max_urls:
        raise PrewarmError(f"urls: {len(value)} URLs, at most {max_urls} per task")
    urls: dict[str, None] = {}
    for url in value:
        if not isinstance(url, str) or not 0 < len(url) <= MAX_URL_CHARS:
            raise PrewarmError(f"urls: expected strings of at most {MAX_URL_CHARS} characters")
        if not all("!" <= c <= "~" for c in url):
            raise PrewarmError(f"urls: expected printable ASCII without spaces, got {url!r}")
        try:
            urlsplit(url).port  # noqa: B018 - raises ValueError if the port does not parse
        except ValueError as exc:  # also an unbalanced "[" in the host
            raise PrewarmError(f"urls: cannot parse {url!r}: {exc}") from None
        host = url_host(url)  # PurgeError (a PrewarmError's parent) if not absolute
        if site is not None and host != site:
            raise PrewarmError(f"site: {site!r} is not the host of {url!r}")
        urls[url] = None
    return tuple(urls)


@dataclass(frozen=True, slots=True)
class PrewarmProgress:
    """One task's progress on one edge, as its report carries it (absolute figures)."""

    id: str
    fetched: int = 0
    cached: int = 0
    failed: int = 0
    queued: int = 0
    errors: tuple[tuple[int, int], ...] = ()  # (URL index in the order, status), bounded

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "fetched": self.fetched, "cached": self.cached,
                               "failed": self.failed, "queued": self.queued}  # fmt: skip
        if self.errors:
            out["errors"] = [list(e) for e in self.errors]
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> PrewarmProgress:
        if not isinstance(raw, dict):
            raise ReportError("prewarm: expected objects")
        task_id = raw.get("id")
        if not isinstance(task_id, str) or not 0 < len(task_id) <= MAX_ID_CHARS:
            raise ReportError("prewarm.id: expected a task id")
        errors = raw.get("errors", [])
        if not isinstance(errors, list) or len(errors) > MAX_PROGRESS_ERRORS:
            raise ReportError(f"prewarm.errors: at most {MAX_PROGRESS_ERRORS} pairs")
        pairs = tuple(_pair(e) for e in errors)
        counts = {k: _whole(raw.get(k, 0), k) for k in ("fetched", "cached", "failed", "queued")}
        return cls(task_id, errors=pairs, **counts)


@dataclass(frozen=True, slots=True)
class HotObject:
    """One of an edge's most requested objects lately, with its (decayed) count."""

    url: str
    count: int

    @classmethod
    def from_list(cls, raw: Any) -> HotObject:
        if not isinstance(raw, list) or len(raw) != 2:
            raise ReportError("hot: expected [url, count] pairs")
        url, count = raw
        if not isinstance(url, str) or not 0 < len(url) <= MAX_HOT_URL_CHARS:
            raise ReportError(f"hot: URLs of at most {MAX_HOT_URL_CHARS} characters")
        try:
            url_host(url)
        except PurgeError as exc:
            raise ReportError(f"hot: {exc}") from None
        return cls(url, _whole(count, "hot count"))


def _pair(raw: Any) -> tuple[int, int]:
    if not isinstance(raw, list) or len(raw) != 2:
        raise ReportError("prewarm.errors: expected [index, status] pairs")
    return _whole(raw[0], "index"), _whole(raw[1], "status")


def _whole(value: Any, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        raise ReportError(f"{key}: expected a whole number >= 0, got {value!r}")
    return value

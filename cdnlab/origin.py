"""The demo origin: static files with realistic caching headers, and a small JSON API.

Run as `python -m cdnlab.origin --listen HOST:PORT [--root DIR]` (the packaged cdnlab/content/
by default). It logs `event=listening origin=HOST:PORT` on stderr once it accepts connections,
and stops cleanly on SIGTERM or SIGINT.

What each path teaches the cache in front of it (RFC 9111):
- images: `public, max-age=86400`; static files carry ETag and Last-Modified, so a stale copy
  revalidates with If-None-Match / If-Modified-Since and gets 304 (RFC 9110 §13.1).
- `/static/*.vN.*`: versioned names, `immutable` for a year (RFC 8246).
- HTML: a short max-age, the page changes with deploys.
- `/api/posts`: `max-age=5, stale-while-revalidate=30` (RFC 5861 §3), with a content ETag.
- `/api/users/{id}`: a `Surrogate-Key` header naming the objects it depends on, for purges.
- `POST /api/comments`: never cached; it stores the comment (in memory) and announces it on
  the notifications stream; it invalidates nothing itself.
- every static file and JSON answer carries `Repr-Digest: sha-256=:…:` (RFC 9530), which
  the edge verifies while it streams the body.
- `/feed.html`: the social app's page (cdnlab/content/static/social.v1.js): images from
  `img.`, posts and comments from `api.`, chat on `chat.` (cdnlab/social.py has the chat
  room, the echo socket and the notifications stream).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import re
import signal
import sys
from collections import deque
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from aiohttp import web

from cdn.config import HostPort, parse_host_port
from cdnlab.social import ROOM, add_live_routes, cors

# The demo content ships inside the package (package data); the origin only reads it.
ORIGIN_ROOT = Path(str(files("cdnlab") / "content"))
DEFAULT_LISTEN = HostPort("127.0.0.1", 8000)
IMAGE_CACHE_CONTROL = "public, max-age=86400"
IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable"
HTML_CACHE_CONTROL = "public, max-age=60"
OTHER_CACHE_CONTROL = "public, max-age=300"
FEED_CACHE_CONTROL = "public, max-age=5, stale-while-revalidate=30"
USER_CACHE_CONTROL = "public, max-age=60"
NO_STORE = "no-store"
POST_COUNT = 10
USER_COUNT = 50
MAX_COMMENTS = 1000  # memory bound: the oldest comments are forgotten first
MAX_COMMENT_TEXT = 500  # characters
RECENT_COMMENTS = 3  # per post, in the feed
MAX_REQUEST_BYTES = 16 * 1024
POST_IMAGES = ("cat.jpg", "dog.jpg", "beach.jpg", "hero.jpg")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".svg"})
VERSIONED_NAME = re.compile(r"\.v\d+\.[a-z0-9]+$")


@dataclass(frozen=True, slots=True)
class Comment:
    post: int
    author: str
    text: str


def cache_control_for(path: str) -> str:
    """The Cache-Control the origin sends for a static file at URL path `path`."""
    suffix = Path(path).suffix.lower()
    if path.startswith("/static/") and VERSIONED_NAME.search(path):
        return IMMUTABLE_CACHE_CONTROL
    if suffix in IMAGE_SUFFIXES:
        return IMAGE_CACHE_CONTROL
    if suffix == ".html":
        return HTML_CACHE_CONTROL
    return OTHER_CACHE_CONTROL


@dataclass(slots=True)
class StaticFile:
    path: Path
    cache_control: str
    # RFC 9530 Repr-Digest of the file's bytes, with the (inode, mtime, size) it was taken
    # at: a file replaced in place (a new profile picture at the same URL) is hashed again.
    repr_digest: str = ""
    hashed_as: tuple[int, int, int] | None = None

    def current_digest(self) -> str:
        """The Repr-Digest of the file as it is now on disk."""
        st = self.path.stat()
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen != self.hashed_as:
            self.repr_digest, self.hashed_as = repr_digest(self.path.read_bytes()), seen
        return self.repr_digest


def repr_digest(body: bytes) -> str:
    """The Repr-Digest field value (RFC 9530 §3) of ``body``: sha-256, a byte sequence."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


def index_files(root: Path) -> dict[str, StaticFile]:
    """Map every URL path under `root` to its file; requests outside this map are 404s.

    Serving from a fixed index (rather than joining request paths onto `root`) makes path
    traversal impossible by construction.
    """
    files: dict[str, StaticFile] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            url = "/" + path.relative_to(root).as_posix()
            # Hashed at start and again when replaced; no pre-compressed siblings are
            # served (no .gz files), so the bytes sent are the file's, whatever the
            # Accept-Encoding.
            files[url] = StaticFile(path, cache_control_for(url))
            files[url].current_digest()
    if "/index.html" in files:
        files["/"] = files["/index.html"]
    return files


def parse_comment(raw: Any) -> Comment:
    """Validate a comment submitted as JSON; raises ValueError naming the bad field."""
    if not isinstance(raw, dict):
        raise ValueError("body must be a JSON object")
    post = raw.get("post")
    if isinstance(post, bool) or not isinstance(post, int) or not 1 <= post <= POST_COUNT:
        raise ValueError(f"post: expected an integer 1..{POST_COUNT}")
    text = raw.get("text")
    if not isinstance(text, str) or not 0 < len(text) <= MAX_COMMENT_TEXT:
        raise ValueError(f"text: expected a string of 1..{MAX_COMMENT_TEXT} characters")
    author = raw.get("author", "anonymous")
    if not isinstance(author, str) or not 0 < len(author) <= 64:
        raise ValueError("author: expected a string of 1..64 characters")
    return Comment(post=post, author=author, text=text)


def build_feed(comments: deque[Comment]) -> dict[str, Any]:
    counts = [0] * (POST_COUNT + 1)
    recent = [deque[Comment](maxlen=RECENT_COMMENTS) for _ in range(POST_COUNT + 1)]
    for comment in comments:
        counts[comment.post] += 1
        recent[comment.post].append(comment)
    posts = [
        {
            "id": i,
            "title": f"Post number {i}",
            "author": (i * 7) % USER_COUNT + 1,
            "comments": counts[i],
            "image": f"/img/{POST_IMAGES[i % len(POST_IMAGES)]}",
            "recent": [asdict(c) for c in recent[i]],
        }
        for i in range(1, POST_COUNT + 1)
    ]
    return {"posts": posts}


def build_user(user_id: int) -> dict[str, Any]:
    return {"id": user_id, "name": f"user{user_id}", "avatar": f"/img/thumb-{user_id % 4 + 1}.png"}


COMMENTS = web.AppKey("comments", deque[Comment])
FILES = web.AppKey("files", dict[str, StaticFile])


def _json_response(
    request: web.Request, payload: Any, cache_control: str, headers: dict[str, str] | None = None
) -> web.StreamResponse:
    """JSON with a strong ETag over its bytes, so caches can revalidate (RFC 9110 §13.1.2),
    and its Repr-Digest (RFC 9530 §3), so they can check what they received."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    all_headers = {"Cache-Control": cache_control, "ETag": etag, **(headers or {})}
    all_headers["Repr-Digest"] = repr_digest(body)
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=all_headers)
    return web.Response(body=body, content_type="application/json", headers=all_headers)


async def static_file(request: web.Request) -> web.StreamResponse:
    found = request.app[FILES].get(request.path)
    if found is None:
        raise web.HTTPNotFound(headers={"Cache-Control": OTHER_CACHE_CONTROL})
    # FileResponse adds ETag and Last-Modified and answers conditional requests with 304.
    headers = {"Cache-Control": found.cache_control, "Repr-Digest": found.current_digest()}
    return web.FileResponse(found.path, headers=headers)


async def posts(request: web.Request) -> web.StreamResponse:
    return _json_response(request, build_feed(request.app[COMMENTS]), FEED_CACHE_CONTROL)


async def user(request: web.Request) -> web.StreamResponse:
    raw_id = request.match_info["user_id"]
    if not raw_id.isdigit() or not 1 <= int(raw_id) <= USER_COUNT:
        raise web.HTTPNotFound(headers={"Cache-Control": USER_CACHE_CONTROL})
    user_id = int(raw_id)
    surrogate = {"Surrogate-Key": f"user-{user_id} users"}
    return _json_response(request, build_user(user_id), USER_CACHE_CONTROL, surrogate)


async def add_comment(request: web.Request) -> web.StreamResponse:
    try:
        comment = parse_comment(await request.json())
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
        return web.json_response(
            {"error": str(exc)}, status=400, headers={"Cache-Control": NO_STORE}
        )
    request.app[COMMENTS].append(comment)
    request.app[ROOM].notify("comment", asdict(comment))
    return web.json_response(asdict(comment), status=201, headers={"Cache-Control": NO_STORE})


def create_app(root: Path = ORIGIN_ROOT) -> web.Application:
    """The origin application serving `root` (the packaged cdnlab/content/ by default)."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[cors])
    app[COMMENTS] = deque(maxlen=MAX_COMMENTS)
    app[FILES] = index_files(root)
    add_live_routes(app)
    app.router.add_get("/api/posts", posts)
    app.router.add_get("/api/users/{user_id}", user)
    app.router.add_post("/api/comments", add_comment)
    app.router.add_get("/{tail:.*}", static_file)
    return app


def _listen_address(text: str) -> HostPort:
    """The router's HOST:PORT parser; its ValueError becomes a usage error (exit code 2)."""
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _serve(listen: HostPort, root: Path) -> None:
    runner = web.AppRunner(create_app(root), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, listen.host, listen.port)
    await site.start()
    bound = runner.addresses[0]
    print(f"event=listening origin={bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cdnlab.origin", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--listen", type=_listen_address, default=DEFAULT_LISTEN)
    parser.add_argument("--root", type=Path, default=ORIGIN_ROOT)
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"origin: {args.root}: not a directory", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(args.listen, args.root))
    except OSError as exc:
        print(f"origin: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

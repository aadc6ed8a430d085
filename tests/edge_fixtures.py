"""Fixtures the edge tests share: a test module loads them with
``pytest_plugins = ("tests.edge_fixtures",)`` (pytest imports this module itself, so a
module that is also imported for its helpers does not miss assertion rewriting).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from edge.server import EdgeServer
from tests.origin_app import FakeRouter, ScriptedOrigin, running_edge


@pytest.fixture
async def origin() -> AsyncIterator[ScriptedOrigin]:
    async with ScriptedOrigin() as scripted:
        yield scripted


@pytest.fixture
async def router() -> AsyncIterator[FakeRouter]:
    async with FakeRouter() as fake:
        yield fake


@pytest.fixture
async def edge(origin: ScriptedOrigin) -> AsyncIterator[EdgeServer]:
    async with running_edge(origin.url) as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # Bodies as the edge sent them: the tests check bytes, not decoded content.
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session

"""After a Redis outage, the pages catch up on what was never pushed to them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web
from playwright.async_api import Browser, expect

from qa.store import NewQuestion
from server import keys
from server.auth import Role
from server.http import VIEWER_COOKIE
from tests.conftest import StartServer, add_staff
from tests.helpers import test_settings as settings_for
from tests.pages.test_qa_pages import _sign_in
from tests.server.test_redis_outage import PrivateRedis, private_redis  # noqa: F401 (fixture)

LOST = "Question posée sur un autre serveur pendant la panne de Redis ?"


async def test_moderation_and_watch_pages_refetch_on_resync(
        browser: Browser, start_server: StartServer, tmp_path: Path,
        private_redis: PrivateRedis) -> None:  # noqa: F811 (the fixture)
    await private_redis.start()
    server = await start_server(settings_for(tmp_path, redis_url=private_redis.url))
    base_url = str(server.make_url("")).rstrip("/")
    await add_staff(server.app, "marie", Role.MODERATOR)
    desk, phone = await browser.new_context(), await browser.new_context()
    errors: list[str] = []
    moderator, viewer = await desk.new_page(), await phone.new_page()
    for page in (moderator, viewer):
        page.on("pageerror", lambda e: errors.append(str(e)))
    await _sign_in(moderator, base_url, "marie")
    await viewer.goto(base_url + "/")
    await _until_connected(server.app, {"/": 1, "/moderation": 1})
    viewer_id = next(c["value"] for c in await phone.cookies() if c["name"] == VIEWER_COOKIE)

    await private_redis.stop()
    # Stored by another process while Redis was away: its push reached no one here.
    store = server.app[keys.QUESTIONS].store
    await store.insert_many([NewQuestion("growth", LOST, None, None, viewer_id, (),
                                         server.app[keys.CLOCK].now())])
    await private_redis.start()

    pending = moderator.locator("#pending-list [data-question-id]").filter(has_text=LOST)
    await expect(pending).to_be_visible(timeout=8000)
    mine = viewer.locator("#my-questions [data-question-id]").filter(has_text=LOST)
    await expect(mine).to_be_visible(timeout=8000)
    assert errors == []
    for context in (desk, phone):
        await context.close()


async def _until_connected(app: web.Application, wanted: dict[str, int]) -> None:
    """Wait until the pages' live connections are open (the metrics count them)."""
    registry = app[keys.METRICS].registry

    def count(namespace: str) -> float:
        value = registry.get_sample_value("tv_socketio_clients", {"namespace": namespace})
        return value or 0.0

    async with asyncio.timeout(10):
        while True:
            if all(count(ns) >= n for ns, n in wanted.items()):
                return
            await asyncio.sleep(0.05)  # polling a counter, not synchronisation

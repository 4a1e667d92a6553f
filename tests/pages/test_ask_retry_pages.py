"""A busy server costs no viewer their question: the watch page keeps it,
sends it again by itself, and says so (headless Chromium, the real app).

The server really is overloaded here, as in tests/server/test_load.py: its
one audience connection is held, so the question writer waits for it, and a
queue of one is full; it answers 503 ``overloaded`` with Retry-After at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, BrowserContext, Page, Request, Response, expect

from server import keys
from server.auth import Role
from tests.conftest import StartServer, add_staff
from tests.helpers import Http, hold_every_connection
from tests.helpers import test_settings as settings_for

OpenHttp = Callable[..., Awaitable[Http]]

QUESTION = "Qui décide du prix minimum garanti aux coopératives de café ?"
SENT = "bien été envoyée"
"""In the page's success message (fr)."""

FAST = {"firstMs": 1000, "minMs": 300, "capMs": 2000}
"""Back-off for tests: the server's own Retry-After (1-2 s) sets the pace."""


@dataclass
class Viewer:
    context: BrowserContext
    page: Page
    posts: list[tuple[float, Request]] = field(default_factory=list)
    """Every POST /api/questions the page sent, with when (monotonic)."""
    answers: list[tuple[float, Response]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def _start(start_server: StartServer, tmp_path: Path) -> tuple[TestServer, str]:
    # One audience connection, waited for up to 30 s: holding it stalls the
    # writers for as long as the test wants; queues of one are full at once.
    settings = settings_for(tmp_path, load={"question_queue": 1, "vote_queue": 1,
                                            "max_wait_s": 30.0},
                            database={"pool_size": 1, "max_overflow": 0})
    server = await start_server(settings)
    return server, str(server.make_url("")).rstrip("/")


async def _viewer(browser: Browser, base: str, retry: dict[str, int] | None = None,
                  fake_clock: bool = False) -> Viewer:
    context = await browser.new_context(locale="fr-FR", viewport={"width": 390, "height": 844})
    page = await context.new_page()
    viewer = Viewer(context, page)
    page.on("pageerror", lambda e: viewer.errors.append(str(e)))

    def is_post(r: Request) -> bool:
        return r.method == "POST" and r.url.endswith("/api/questions")

    page.on("request", lambda r: viewer.posts.append((time.monotonic(), r)) if is_post(r)
            else None)
    page.on("response", lambda r: viewer.answers.append((time.monotonic(), r))
            if is_post(r.request) else None)
    if retry:
        await context.add_init_script(f"window.tvRetryConfig = {json.dumps(retry)};")
    if fake_clock:
        await page.clock.install()  # runs as usual until a test moves it on
    async with page.expect_response(lambda r: r.url.endswith("/api/questions/mine")):
        await page.goto(base + "/")
    return viewer


async def _ask(page: Page, text: str = QUESTION) -> None:
    await page.select_option("#ask-theme", "fair-price")
    await page.fill("#ask-text", text)
    await page.fill("#ask-author", "Awa, Dakar")
    await page.click("#ask-submit")


async def _health(probe: Http) -> dict[str, Any]:
    status, body, _ = await probe.request("GET", "/healthz")
    assert status == 200, body
    load: dict[str, Any] = body["load"]
    return load


async def _until(check: Callable[[], Awaitable[bool]], within: float = 10) -> None:
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - polling the server's own report
            await asyncio.sleep(0.02)


async def _queue_at(probe: Http, queue: str, key: str, value: int) -> None:
    async def reached() -> bool:
        return bool((await _health(probe))[queue][key] >= value)
    await _until(reached)


@contextlib.asynccontextmanager
async def _held(server: TestServer) -> AsyncIterator[None]:
    """The audience's connections all busy, as under a saturating audience."""
    async with contextlib.AsyncExitStack() as stack:
        assert await hold_every_connection(server.app[keys.ENGINE], stack) >= 1
        yield


@contextlib.asynccontextmanager
async def _overloaded(server: TestServer, base: str, http: OpenHttp,
                      path: str = "/api/questions", body: Any = None,
                      queue: str = "questions") -> AsyncIterator[Http]:
    """Until the block ends, the server sheds ``path`` with 503 overloaded:
    one request is being written (stuck on the pool), one waits, the queue
    holds one. Yields a probe; both requests succeed once it ends."""
    probe = await http(base)
    others = [await http(base) for _ in range(2)]
    payload = body or {"theme": "growth", "text": "Une autre question ?"}
    async with _held(server):
        first = asyncio.create_task(others[0].request("POST", path, payload))
        await _queue_at(probe, queue, "writing", 1)
        second = asyncio.create_task(others[1].request("POST", path, payload))
        await _queue_at(probe, queue, "queued", 1)
        status, reply, _ = await probe.request("POST", path, payload)
        assert (status, reply["error"]) == (503, "overloaded"), reply
        yield probe
    async with asyncio.timeout(15):
        for status, reply, _ in await asyncio.gather(first, second):
            assert status in (200, 201), reply


async def _stored(staff: Http, text: str) -> list[dict[str, Any]]:
    status, questions, _ = await staff.request("GET", "/api/questions")
    assert status == 200, questions
    return [q for q in questions if q["text"] == text]


async def _staff(server: TestServer, base: str, http: OpenHttp) -> Http:
    await add_staff(server.app, "marie", Role.MODERATOR)
    staff = await http(base)
    await staff.sign_in("marie")
    return staff


async def _draft(page: Page) -> Any:
    return await page.evaluate("sessionStorage.getItem('tdmce.ask_draft')")


async def test_a_shed_question_is_kept_sent_again_and_stored_once(
        browser: Browser, start_server: StartServer, tmp_path: Path, http: OpenHttp) -> None:
    server, base = await _start(start_server, tmp_path)
    staff = await _staff(server, base, http)
    viewer = await _viewer(browser, base, FAST)
    page = viewer.page

    async with _overloaded(server, base, http) as probe:
        await _ask(page)
        notice = page.locator("#ask-retry")
        await expect(notice).to_have_attribute("data-state", "waiting")
        await expect(page.locator("#ask-retry-text")).to_contain_text(
            "Le serveur est très sollicité : votre question est gardée et sera renvoyée dans")
        await expect(page.locator("#ask-announce")).to_contain_text("très sollicité")
        await expect(page.locator("#ask-text")).to_have_value(QUESTION)
        await expect(page.locator("#ask-author")).to_have_value("Awa, Dakar")
        await expect(page.locator("#ask-submit")).to_be_disabled()
        await expect(page.locator("#ask-retry-cancel")).to_be_visible()
        # Still refused: it keeps trying, never sooner than the server said.
        async def refused_twice() -> bool:
            return len(viewer.answers) >= 2
        await _until(refused_twice)
        assert (await _health(probe))["questions"]["shed"] >= 3

    await expect(page.locator("#ask-status")).to_contain_text(SENT, timeout=20_000)
    mine = page.locator("#my-questions [data-question-id]").filter(has_text=QUESTION)
    await expect(mine).to_have_count(1)
    await expect(page.locator("#ask-retry")).to_be_hidden()
    await expect(page.locator("#ask-text")).to_have_value("")
    await expect(page.locator("#ask-submit")).to_be_enabled()
    assert len(await _stored(staff, QUESTION)) == 1
    assert await _draft(page) is None

    statuses = [r.status for _, r in viewer.answers]
    assert statuses[-1] == 201 and set(statuses[:-1]) == {503}, statuses
    for (answered, response), (sent, _) in zip(viewer.answers, viewer.posts[1:], strict=False):
        retry_after = float(await response.header_value("retry-after") or 0)
        assert sent - answered >= retry_after - 0.25, (sent - answered, retry_after)
    assert viewer.errors == []
    await viewer.context.close()


async def test_cancel_stops_sending_again_and_keeps_the_text(
        browser: Browser, start_server: StartServer, tmp_path: Path, http: OpenHttp) -> None:
    server, base = await _start(start_server, tmp_path)
    staff = await _staff(server, base, http)
    viewer = await _viewer(browser, base, FAST, fake_clock=True)
    page = viewer.page

    async with _overloaded(server, base, http) as probe:
        await _ask(page)
        await expect(page.locator("#ask-retry")).to_have_attribute("data-state", "waiting")
        await page.click("#ask-retry-cancel")
        await expect(page.locator("#ask-retry")).to_have_attribute("data-state", "cancelled")
        await expect(page.locator("#ask-retry-text")).to_contain_text("annulé")
        await expect(page.locator("#ask-announce")).to_contain_text("annulé")
        await expect(page.locator("#ask-text")).to_have_value(QUESTION)
        await expect(page.locator("#ask-text")).to_be_editable()
        await expect(page.locator("#ask-submit")).to_be_enabled()
        sent_before = len(viewer.posts)
        shed_before = (await _health(probe))["questions"]["shed"]
        # Five minutes of the page's time: any attempt still planned would go now.
        await page.clock.run_for(5 * 60_000)
        # Barrier: a request of the page's own, sent after that, has its answer.
        await page.evaluate("fetch('/healthz').then((r) => r.json())")
        assert (await _health(probe))["questions"]["shed"] == shed_before
        assert len(viewer.posts) == sent_before

    # The viewer sends it themselves once the server is free: stored once.
    await page.click("#ask-submit")
    await expect(page.locator("#ask-status")).to_contain_text(SENT, timeout=10_000)
    assert len(viewer.posts) == sent_before + 1
    assert len(await _stored(staff, QUESTION)) == 1
    assert viewer.errors == []
    await viewer.context.close()


async def test_it_gives_up_after_the_limit_and_offers_to_try_again(
        browser: Browser, start_server: StartServer, tmp_path: Path, http: OpenHttp) -> None:
    server, base = await _start(start_server, tmp_path)
    staff = await _staff(server, base, http)
    viewer = await _viewer(browser, base, {**FAST, "giveUpMs": 3000})
    page = viewer.page

    async with _overloaded(server, base, http):
        await _ask(page)
        await expect(page.locator("#ask-retry")).to_have_attribute("data-state", "gave-up",
                                                                    timeout=10_000)
        await expect(page.locator("#ask-retry-text")).to_contain_text(
            "nous avons arrêté de renvoyer votre question")
        await expect(page.locator("#ask-announce")).to_contain_text("arrêté")
        again = page.get_by_role("button", name="Réessayer")
        await expect(again).to_be_visible()
        await expect(page.locator("#ask-retry-cancel")).to_be_hidden()
        await expect(page.locator("#ask-text")).to_have_value(QUESTION)
        await expect(page.locator("#ask-submit")).to_be_enabled()
        assert len(viewer.posts) >= 2
        assert {r.status for _, r in viewer.answers} == {503}

    await again.click()
    await expect(page.locator("#ask-status")).to_contain_text(SENT, timeout=10_000)
    await expect(again).to_be_hidden()
    assert len(await _stored(staff, QUESTION)) == 1
    assert viewer.errors == []
    await viewer.context.close()


async def test_the_draft_survives_a_reload_and_is_sent_once(
        browser: Browser, start_server: StartServer, tmp_path: Path, http: OpenHttp) -> None:
    server, base = await _start(start_server, tmp_path)
    staff = await _staff(server, base, http)
    viewer = await _viewer(browser, base, FAST)
    page = viewer.page

    async with _overloaded(server, base, http):
        await _ask(page)
        await expect(page.locator("#ask-retry")).to_have_attribute("data-state", "waiting")
        await page.reload()
        await expect(page.locator("#ask-text")).to_have_value(QUESTION)
        await expect(page.locator("#ask-theme")).to_have_value("fair-price")
        await expect(page.locator("#ask-author")).to_have_value("Awa, Dakar")
        # Still being sent after the reload, still refused for now.
        await expect(page.locator("#ask-retry")).to_have_attribute("data-state", "waiting")
        await expect(page.locator("#ask-submit")).to_be_disabled()

    await expect(page.locator("#ask-status")).to_contain_text(SENT, timeout=20_000)
    mine = page.locator("#my-questions [data-question-id]").filter(has_text=QUESTION)
    await expect(mine).to_have_count(1)
    assert len(await _stored(staff, QUESTION)) == 1
    assert await _draft(page) is None
    await page.reload()
    await expect(page.locator("#ask-text")).to_have_value("")
    assert viewer.errors == []
    await viewer.context.close()


async def test_a_question_stored_without_an_answer_is_not_sent_twice(
        browser: Browser, start_server: StartServer, tmp_path: Path, http: OpenHttp) -> None:
    server, base = await _start(start_server, tmp_path)
    staff = await _staff(server, base, http)
    probe = await http(base)
    # The answer is given up after 1 s; the next attempt is 20 s away, which
    # the test reaches by moving the page's clock, once the question is stored.
    viewer = await _viewer(browser, base, {"timeoutMs": 1000, "firstMs": 20_000,
                                           "minMs": 20_000, "capMs": 20_000},
                           fake_clock=True)
    page = viewer.page

    async with _held(server):
        await _ask(page)
        # Admitted and queued: the server will store it, but not in time to answer.
        await _queue_at(probe, "questions", "writing", 1)
        await expect(page.locator("#ask-retry")).to_have_attribute("data-state", "waiting")
        await expect(page.locator("#ask-retry-text")).to_contain_text("n'a pas répondu")
        await expect(page.locator("#ask-text")).to_have_value(QUESTION)

    async def stored() -> bool:
        return len(await _stored(staff, QUESTION)) == 1
    await _until(stored)
    assert len(viewer.posts) == 1

    # Jump to the next attempt (firing what is due once; time then flows on):
    # not run_for(), which would also expire the next request's timeout at once.
    await page.clock.fast_forward(21_000)
    await expect(page.locator("#ask-status")).to_contain_text(SENT, timeout=10_000)
    mine = page.locator("#my-questions [data-question-id]").filter(has_text=QUESTION)
    await expect(mine).to_have_count(1)
    await expect(page.locator("#ask-text")).to_have_value("")
    assert len(viewer.posts) == 1, "sent again although the server had stored it"
    assert len(await _stored(staff, QUESTION)) == 1
    assert await _draft(page) is None
    assert viewer.errors == []
    await viewer.context.close()


async def test_a_shed_vote_is_sent_again_quietly_and_counted_honestly(
        browser: Browser, start_server: StartServer, tmp_path: Path, http: OpenHttp) -> None:
    server, base = await _start(start_server, tmp_path)
    staff = await _staff(server, base, http)
    asker = await http(base)
    status, q, _ = await asker.request("POST", "/api/questions",
                                       {"theme": "growth", "text": QUESTION})
    assert status == 201, q
    status, q, _ = await staff.request("PATCH", f"/api/questions/{q['id']}",
                                       {"status": "approved", "version": q["version"]})
    assert status == 200, q
    viewer = await _viewer(browser, base, FAST)
    page = viewer.page
    item = page.locator(f'#public-questions [data-question-id="{q["id"]}"]')
    votes, button = item.locator(".votes"), item.locator(".vote-button")
    await expect(votes).to_have_attribute("data-votes", "0")

    vote_path = f"/api/questions/{q['id']}/vote"
    async with _overloaded(server, base, http, vote_path, {}, "votes"):
        async with page.expect_response(lambda r: r.url.endswith(vote_path)) as refused:
            await button.click()
        assert (await refused.value).status == 503
        await expect(button).to_have_attribute("aria-busy", "true")
        await expect(button).to_have_attribute("data-pending", "POST")
        await expect(button).to_have_attribute("aria-pressed", "false")
        # Nothing counted that the server has not counted.
        await expect(votes).to_have_attribute("data-votes", "0")
        await expect(page.locator("#public-status")).to_be_hidden()

    # The two other votes and this one, once the server is free.
    await expect(votes).to_have_attribute("data-votes", "3", timeout=20_000)
    await expect(button).to_have_attribute("aria-pressed", "true")
    await expect(button).not_to_have_attribute("aria-busy", "true")
    await expect(page.locator("#public-status")).to_be_hidden()
    status, listed, _ = await staff.request("GET", f"/api/questions/{q['id']}")
    assert status == 200 and listed["votes"] == 3, listed
    assert viewer.errors == []
    await viewer.context.close()

"""The whole question flow as people see it, in headless Chromium."""

from __future__ import annotations

import re

from playwright.async_api import Browser, Page, expect

from server.auth import Role
from tests.conftest import add_staff
from tests.helpers import PASSWORD

QUESTION = "Quelle part du prix d'une tablette de chocolat revient au cacaoculteur ?"


async def _sign_in(page: Page, base_url: str, username: str) -> None:
    await page.goto(f"{base_url}/moderation")
    await expect(page).to_have_url(re.compile(r"/login\?next=(/|%2F)moderation$"))
    await page.fill("#login-username", username)
    await page.fill("#login-password", PASSWORD)
    await page.press("#login-password", "Enter")
    await expect(page).to_have_url(f"{base_url}/moderation")


async def test_viewer_asks_moderator_approves_overlay_shows(browser: Browser, server, base_url):
    await add_staff(server.app, "marie", Role.MODERATOR)
    phone = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                      has_touch=True, locale="fr-FR")
    desk = await browser.new_context(viewport={"width": 1400, "height": 900})
    studio = await browser.new_context(viewport={"width": 1920, "height": 1080})
    errors: list[str] = []
    viewer, moderator, overlay = (await phone.new_page(), await desk.new_page(),
                                  await studio.new_page())
    for page in (viewer, moderator, overlay):
        page.on("pageerror", lambda e: errors.append(str(e)))

    await _sign_in(moderator, base_url, "marie")
    await overlay.goto(f"{base_url}/overlay")
    await expect(overlay.locator("#lower-third")).not_to_have_class("visible")

    await viewer.goto(base_url + "/")
    await viewer.select_option("#ask-theme", "fair-price")
    await viewer.fill("#ask-text", QUESTION)
    await viewer.fill("#ask-author", "Léa, Lyon")
    await viewer.click("#ask-submit")
    await expect(viewer.locator("#ask-status")).to_be_visible()
    mine = viewer.locator("#my-questions [data-question-id]").filter(has_text=QUESTION)
    await expect(mine.locator(".status")).to_have_attribute("data-status", "pending")

    # The moderator's console shows it live, without a reload.
    pending = moderator.locator("#pending-list [data-question-id]").filter(has_text=QUESTION)
    await expect(pending).to_be_visible(timeout=5000)
    await pending.locator('[data-action="approve"]').click()

    # The viewer sees the approval, and the question among the public ones.
    await expect(mine.locator(".status")).to_have_attribute("data-status", "approved",
                                                            timeout=5000)
    public = viewer.locator("#public-questions [data-question-id]").filter(has_text=QUESTION)
    await expect(public).to_be_visible(timeout=5000)

    approved = moderator.locator("#approved-list [data-question-id]").filter(has_text=QUESTION)
    await approved.locator('[data-action="on-air"]').click()
    await expect(overlay.locator("#lower-third")).to_have_class("visible", timeout=5000)
    await expect(overlay.locator("#lower-third-text")).to_have_text(QUESTION)
    await expect(overlay.locator("#lower-third-author")).to_contain_text("Léa, Lyon")

    assert errors == []
    for context in (phone, desk, studio):
        await context.close()

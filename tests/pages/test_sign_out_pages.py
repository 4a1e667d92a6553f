"""Signing out as staff do it, in headless Chromium (issue 8, defects 6, 7 and 11)."""

from __future__ import annotations

import re

from playwright.async_api import Browser, expect

from server.auth import Role
from tests.conftest import add_staff
from tests.pages.test_qa_pages import _sign_in


async def test_the_staff_bar_button_signs_out_and_other_tabs_follow(browser: Browser, server,
                                                                    base_url):
    await add_staff(server.app, "marie", Role.MODERATOR)
    desk = await browser.new_context(viewport={"width": 1400, "height": 900}, locale="fr-FR")
    errors: list[str] = []
    console, other_tab = await desk.new_page(), await desk.new_page()
    for page in (console, other_tab):
        page.on("pageerror", lambda e: errors.append(str(e)))
    await _sign_in(console, base_url, "marie")
    await other_tab.goto(f"{base_url}/moderation")
    await expect(other_tab).to_have_url(f"{base_url}/moderation")

    await console.get_by_role("button", name="Se déconnecter").click()

    # This tab lands on the watch page, signed out...
    await expect(console).to_have_url(f"{base_url}/")
    answer = await console.request.get(f"{base_url}/api/session")
    assert answer.status == 401
    # ...and the other tab's console is told its session ended, and goes to sign in.
    await expect(other_tab).to_have_url(re.compile(r"/login\?next="), timeout=5000)
    assert errors == []
    await desk.close()


async def test_signing_in_never_leaves_the_site(browser: Browser, server, base_url):
    await add_staff(server.app, "marie", Role.MODERATOR)
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{base_url}/login?next=/%09/example.org/steal")
    await page.fill("#login-username", "marie")
    await page.fill("#login-password", "correct horse battery staple")
    await page.press("#login-password", "Enter")
    await expect(page).to_have_url(f"{base_url}/moderation")
    await context.close()

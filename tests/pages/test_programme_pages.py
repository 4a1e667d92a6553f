"""The programme as people see it, in headless Chromium: every viewer in their
own time zone, the director taking segments, and everyone following live."""

from __future__ import annotations

import re

from playwright.async_api import Browser, Page, expect

from server.auth import Role
from tests.conftest import add_staff
from tests.helpers import PASSWORD

OPENING = "Ouverture : le Tour du Monde du Commerce Équitable"
COOPERATIVES = "Coopératives : comment les producteurs arrivent-ils à vendre sur ce marché ?"


async def _sign_in(page: Page, base_url: str, username: str, path: str) -> None:
    await page.goto(f"{base_url}{path}")
    await expect(page).to_have_url(re.compile(rf"/login\?next=(/|%2F){path[1:]}$"))
    await page.fill("#login-username", username)
    await page.fill("#login-password", PASSWORD)
    await page.press("#login-password", "Enter")
    await expect(page).to_have_url(f"{base_url}{path}")


async def test_running_order_in_each_viewers_time_zone(browser: Browser, base_url):
    # The Ecuador link is planned at 15:50 in Paris on 9 May 2027 (13:50 UTC).
    expected = {
        "America/Guayaquil": {"ouverture": "07:00", "duplex-equateur": "08:50"},
        "Asia/Tokyo": {"ouverture": "21:00", "duplex-equateur": "22:50"},
        "Europe/Paris": {"ouverture": "14:00", "duplex-equateur": "15:50"},
    }
    errors: list[str] = []
    for zone, times in expected.items():
        context = await browser.new_context(timezone_id=zone, locale="fr-FR",
                                            viewport={"width": 390, "height": 844})
        page = await context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(f"{base_url}/programme")
        await expect(page.locator("#viewer-timezone")).to_have_text(zone)
        for segment_id, local in times.items():
            row = page.locator(f'#running-order [data-segment-id="{segment_id}"]')
            await expect(row.locator(".local-time")).to_have_text(local)
        ecuador = page.locator('#running-order [data-segment-id="duplex-equateur"]')
        await expect(ecuador.locator(".paris-time")).to_have_text("15:50")
        # Paris time is shown beside the viewer's own only where it differs.
        paris_visible = await ecuador.locator(".paris-time").is_visible()
        assert paris_visible == (zone != "Europe/Paris")
        await expect(page.locator('a[href="/programme.ics"]')).to_have_text("Ajouter à mon agenda")
        await context.close()
    assert errors == []


async def test_director_takes_and_everyone_follows(browser: Browser, server, base_url):
    await add_staff(server.app, "regie", Role.DIRECTOR)
    await add_staff(server.app, "marie", Role.MODERATOR)
    desk = await browser.new_context(viewport={"width": 1400, "height": 900}, locale="fr-FR")
    phone = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                      has_touch=True, locale="fr-FR")
    console = await browser.new_context(viewport={"width": 1400, "height": 900},
                                        locale="fr-FR")
    errors: list[str] = []
    director, viewer, moderator = (await desk.new_page(), await phone.new_page(),
                                   await console.new_page())
    for page in (director, viewer, moderator):
        page.on("pageerror", lambda e: errors.append(str(e)))

    await _sign_in(director, base_url, "regie", "/control")
    await _sign_in(moderator, base_url, "marie", "/moderation")
    await viewer.goto(base_url + "/")
    await expect(viewer.locator('#programme-now [data-role="countdown"]')).to_contain_text("j")
    await expect(director.locator("#state")).to_have_text("Avant")

    await director.click('[data-command="start"]')
    await expect(director.locator("#state")).to_have_text("En direct")
    on_air = viewer.locator('#programme-now [data-role="on-air-title"]')
    await expect(on_air).to_have_text(OPENING, timeout=5000)
    await expect(viewer.locator('#programme-now [data-role="next-title"]')).to_have_text(
        COOPERATIVES)
    await expect(moderator.locator('#programme-strip [data-role="on-air-title"]')).to_have_text(
        OPENING, timeout=5000)

    await director.get_by_role("button", name=re.compile("Prendre la suivante")).click()
    await expect(on_air).to_have_text(COOPERATIVES, timeout=5000)
    # The debate's theme is suggested in the ask form.
    await expect(viewer.locator("#ask-theme")).to_have_value("cooperatives")
    row = director.locator('tr[data-segment-id="debat-cooperatives"]')
    await expect(row).to_have_attribute("aria-current", "true")
    await expect(row).to_have_class(re.compile(r"segment-row--on-air"))
    await expect(director.locator('tr[data-segment-id="ouverture"]')).not_to_have_attribute(
        "aria-current", "true")
    await expect(director.locator('tr[data-segment-id="duplex-afrique"]')).to_have_class(
        re.compile(r"segment-row--next"))
    await expect(moderator.locator('#programme-strip [data-role="on-air-title"]')).to_have_text(
        COOPERATIVES, timeout=5000)
    await expect(moderator.locator('#programme-strip [data-role="next-title"]')).to_have_text(
        "Duplex Afrique")

    # Taken 20 minutes early against the plan: the over/under clock says so, in green.
    over_under = director.locator("#over-under")
    await expect(over_under).to_have_text(re.compile(r"^-\d+:\d\d"))
    await expect(over_under).to_have_attribute("data-sign", "early")
    await expect(director.locator("#hard-start")).to_contain_text("Équateur 15:50")
    site_time = director.locator('tr[data-segment-id="duplex-equateur"] .site-time')
    await expect(site_time).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"))

    # Space takes the next segment when focus is not in a field.
    await director.locator("body").press(" ")
    await expect(on_air).to_have_text("Duplex Afrique", timeout=5000)

    # Ending asks for a confirmation inside the page.
    await director.click('[data-command="end"]')
    await expect(director.locator("#end-confirm")).to_be_visible()
    await director.click('[data-confirm="end"]')
    await expect(director.locator("#state")).to_have_text("Terminée")
    await expect(viewer.locator("#programme-now")).to_contain_text(
        "L'émission est terminée — merci !", timeout=5000)

    assert errors == []
    for context in (desk, phone, console):
        await context.close()


async def test_control_room_is_for_directors_only(browser: Browser, server, base_url):
    await add_staff(server.app, "marie", Role.MODERATOR)
    context = await browser.new_context(locale="fr-FR")
    page = await context.new_page()
    await _sign_in(page, base_url, "marie", "/moderation")
    # A moderator has no link to the control room, and is sent to sign in there.
    await expect(page.locator("#staff-nav a[href='/control']")).to_have_count(0)
    await expect(page.locator("#staff-nav a[aria-current='page']")).to_have_text("Modération")
    await page.goto(f"{base_url}/control")
    await expect(page).to_have_url(re.compile(r"/login\?next=(/|%2F)control$"))
    await context.close()


async def test_control_errors_in_place_and_expired_session(browser: Browser, server, base_url):
    await add_staff(server.app, "regie", Role.DIRECTOR)
    context = await browser.new_context(viewport={"width": 1400, "height": 900},
                                        locale="fr-FR")
    page = await context.new_page()
    await _sign_in(page, base_url, "regie", "/control")
    await page.click('[data-command="start"]')
    await expect(page.locator("#state")).to_have_text("En direct")

    await page.click('[data-command="extend"][data-seconds="60"]')
    await expect(page.locator("#control-notice")).to_have_text("Séquence ajustée de +01:00")

    # The server's refusal is said where the director looks, not in a pop-up.
    start = page.locator('[data-command="start"]')
    await start.evaluate("button => { button.disabled = false; }")
    await start.click()
    alert = page.get_by_role("alert").filter(has_text="L'émission a déjà commencé.")
    await expect(alert).to_be_visible()

    # Signed out elsewhere: the next command leads to the sign-in page.
    await context.clear_cookies()
    await page.click('[data-command="hold"]')
    await expect(page).to_have_url(re.compile(r"/login\?next=(/|%2F)control$"))
    await context.close()

"""The whole video path in real browsers, run INSIDE a private network namespace.

``tests/pages/test_video_pages.py`` starts this script under ``unshare -n``
(only ``lo``, brought up), so that every WebRTC packet stays on loopback.
It starts the real app in-process, then headless Chromium with a fake camera:

1. a viewer opens ``/`` before the show: the player plays the server's slate;
2. the Europe site's technician opens ``/contribute/europe?token=…`` and
   publishes; the page says the server receives the picture;
3. the director takes ``duplex-europe``: the contributor's tally goes on air,
   and the viewer, on the same connection, now sees the camera, not the slate;
4. the director's cue reaches the contributor's page;
5. the server drops the viewer's session: the player reconnects by itself;
6. the network goes down for a while: the player says it is reconnecting, and
   both pages come back by themselves once it is up;
7. the technician stops: the page says the server receives nothing, and the
   viewer sees the slate again.

It prints one JSON line (``{"ok": …, "checks": {…}, …}``) and exits 0 or 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, Response, async_playwright

from server import keys
from server.app import create_app
from server.auth import Role
from server.settings import VideoSettings
from tests.helpers import PASSWORD, Http, test_settings

CHROMIUM = os.environ.get("TV_TEST_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-fake-device-for-media-stream=fps=30", "--use-fake-ui-for-media-stream",
         "--allow-loopback-in-peer-connection"]
FEED, SEGMENT = "europe", "duplex-europe"
CUE = "30 secondes avant l'antenne"
# Long enough for ICE to give up (about 6 s, then the pages' 3 s of grace).
OUTAGE_S = 12.0

# The picture's mean colour, from a small canvas copy of the <video>: the
# server's slate is dark blue (tv/slate.py), Chromium's fake camera green.
PICTURE_JS = """() => {
  const video = document.getElementById("programme-video");
  if (!video || !video.videoWidth) return null;
  const canvas = document.createElement("canvas");
  canvas.width = 32; canvas.height = 18;
  const g = canvas.getContext("2d", { willReadFrequently: true });
  g.drawImage(video, 0, 0, canvas.width, canvas.height);
  const data = g.getImageData(0, 0, canvas.width, canvas.height).data;
  let r = 0, gr = 0, b = 0;
  for (let i = 0; i < data.length; i += 4) { r += data[i]; gr += data[i + 1]; b += data[i + 2]; }
  const n = data.length / 4;
  r /= n; gr /= n; b /= n;
  const kind = gr > r + 30 && gr > b + 30 ? "camera" : b > gr && b > r ? "slate" : "other";
  return { kind, rgb: [Math.round(r), Math.round(gr), Math.round(b)],
           width: video.videoWidth, height: video.videoHeight };
}"""


MAX_VIEWERS = 2
"""This server's [video] max_viewers: the viewer, and room for its reconnections."""


async def set_loopback(state: str) -> None:
    process = await asyncio.create_subprocess_exec("ip", "link", "set", "lo", state)
    if await process.wait() != 0:
        raise Failed(f"ip link set lo {state} failed")


class Failed(Exception):
    """A check did not hold; the message says which."""


async def wait_for(page: Page, expression: str, what: str, timeout_s: float = 20.0) -> Any:
    """Poll ``expression`` in the page until truthy; its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.25)


AUDIO_JS = "window.tvPlayer.inboundAudio()"


async def sound_flowing(page: Page) -> dict[str, Any]:
    """The programme's sound over one second: samples received, few of them concealed."""
    first = await page.evaluate(AUDIO_JS)
    await asyncio.sleep(1.0)
    second = await page.evaluate(AUDIO_JS)
    if not first or not second:
        raise Failed(f"the player has no inbound audio: {first} then {second}")
    samples = second["samples"] - first["samples"]
    concealed = second["concealed"] - first["concealed"]
    # One second at 48 kHz; allow for the jitter buffer's adjustments.
    if samples < 40_000 or concealed > samples / 4:
        raise Failed(f"the sound is not flowing: {samples} samples in 1 s, {concealed} concealed")
    return {"samples_per_s": samples, "concealed": concealed,
            "packets_per_s": second["packets"] - first["packets"]}


async def frames_rising(page: Page) -> list[int]:
    """Decoded-frame counts one second apart; they must rise."""
    first = await page.evaluate("window.tvPlayer.framesDecoded()")
    await asyncio.sleep(1.0)
    second = await page.evaluate("window.tvPlayer.framesDecoded()")
    if not second > first:
        raise Failed(f"decoded frames did not rise: {first} then {second}")
    return [first, second]


async def wait_picture(page: Page, kind: str, timeout_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = await page.evaluate(PICTURE_JS)
        if last and last["kind"] == kind:
            return dict(last)
        await asyncio.sleep(0.25)
    raise Failed(f"the viewer's picture is not the {kind}: last sample {last}")


async def run(browser: Browser, base: str, token: str, director: Http,
              result: dict[str, Any]) -> None:
    checks: dict[str, Any] = result["checks"]
    errors: list[str] = result["page_errors"]

    viewer_ctx = await browser.new_context(viewport={"width": 1280, "height": 800},
                                           locale="fr-FR", timezone_id="Europe/Paris")
    site_ctx = await browser.new_context(viewport={"width": 390, "height": 844},
                                         locale="fr-FR", timezone_id="Europe/Brussels")
    viewer, site = await viewer_ctx.new_page(), await site_ctx.new_page()
    for name, page in (("viewer", viewer), ("contributor", site)):
        page.on("pageerror", lambda e, n=name: errors.append(f"{n}: {e}"))

    whep_sessions: list[str] = []

    def note_session(response: Response) -> None:
        if response.url.endswith("/whep") and response.status == 201:
            whep_sessions.append(response.headers["location"])

    viewer.on("response", note_session)

    # 1. Before the show the viewer plays the slate, and is told the show has not begun.
    await viewer.goto(f"{base}/")
    await wait_for(viewer, "window.tvPlayer && window.tvPlayer.state === 'playing'",
                   "the viewer's player to play", 30)
    sessions = await viewer.evaluate("window.tvPlayer.sessions")
    checks["before_frames"] = await frames_rising(viewer)
    checks["before_picture"] = await wait_picture(viewer, "slate")
    checks["before_caption"] = await viewer.inner_text("#player-status")

    # 1b. The server takes MAX_VIEWERS players: one more is told, in words, that the
    #     live stream is full, while those watching keep their picture.
    extra_ctx = await browser.new_context(locale="fr-FR")
    second, third = await extra_ctx.new_page(), await extra_ctx.new_page()
    await second.goto(f"{base}/")
    await wait_for(second, "window.tvPlayer && window.tvPlayer.state === 'playing'",
                   "a second viewer to play", 30)
    await third.goto(f"{base}/")
    checks["full_caption"] = await wait_for(
        third, "window.tvPlayer && window.tvPlayer.state === 'full' && "
        "document.getElementById('player-status').textContent", "the third viewer to be told", 20)
    checks["full_first_frames"] = await frames_rising(viewer)
    await extra_ctx.close()

    # 2. The site publishes; its page says the server receives it.
    await site.goto(f"{base}/contribute/{FEED}?token={token}")
    await wait_for(site, "!document.getElementById('publish').disabled", "the camera", 15)
    await site.click("#publish")
    await wait_for(site, "document.getElementById('feed-status').dataset.state === 'live'",
                   "the server to receive the contributor", 30)
    checks["contributor_status"] = await site.inner_text("#feed-status")
    checks["publish_state"] = await site.get_attribute("#publish-state", "data-state")
    checks["tally_before_take"] = await site.get_attribute("#tally", "data-state")

    # 3. The director takes the Europe duplex: tally on air, the viewer sees the camera.
    status, body, _ = await director.request("POST", f"/api/programme/take/{SEGMENT}")
    if status != 200:
        raise Failed(f"take {SEGMENT}: {status} {body!r}")
    await wait_for(site, "document.getElementById('tally').dataset.state === 'on_air'",
                   "the contributor's tally to go on air", 10)
    checks["tally_text"] = await site.inner_text("#tally [data-role='text']")
    checks["live_picture"] = await wait_picture(viewer, "camera", 20)
    checks["live_frames"] = await frames_rising(viewer)
    checks["live_sound"] = await sound_flowing(viewer)
    checks["viewer_state"] = await viewer.evaluate("window.tvPlayer.state")
    checks["same_connection"] = await viewer.evaluate("window.tvPlayer.sessions") == sessions

    # 4. A cue from the director appears on the contributor's page.
    status, body, _ = await director.request("POST", f"/api/feeds/{FEED}/cue", {"text": CUE})
    if status != 200:
        raise Failed(f"cue: {status} {body!r}")
    await wait_for(site, f"document.getElementById('cue').textContent === {json.dumps(CUE)}",
                   "the cue on the contributor's page", 10)
    checks["cue"] = CUE
    checks["send_stats"] = await site.inner_text("#send-stats")
    if shots := os.environ.get("TV_VIDEO_SCREENSHOTS"):
        # Artifacts for a human to look at.
        await site.screenshot(path=f"{shots}/contribute-live.png", full_page=True)
        await viewer.screenshot(path=f"{shots}/watch-live.png")

    # 5. The server ends the viewer's session (as a restart would): the player
    #    notices at once (DTLS closed) and comes back by itself, with a new session.
    started = time.monotonic()
    status, body, _ = await director.request("DELETE", whep_sessions[-1])
    if status != 200:
        raise Failed(f"DELETE {whep_sessions[-1]}: {status} {body!r}")
    await wait_for(viewer, f"window.tvPlayer.sessions > {sessions} && "
                   "window.tvPlayer.state === 'playing'", "the player to reconnect", 30)
    checks["reconnected_after_s"] = round(time.monotonic() - started, 1)
    checks["reconnected_frames"] = await frames_rising(viewer)
    checks["reconnected_picture"] = await wait_picture(viewer, "camera")

    # 6. The network goes away for a while (lo down: this namespace's only link):
    #    the viewer is told, then both pages come back by themselves.
    await set_loopback("down")
    try:
        checks["outage_caption"] = await wait_for(
            viewer, "window.tvPlayer.state === 'reconnecting' && "
            "document.getElementById('player-status').textContent", "the reconnecting caption",
            OUTAGE_S)
        await asyncio.sleep(OUTAGE_S - 4)
        checks["outage_publish_state"] = await site.get_attribute("#publish-state", "data-state")
        checks["outage_publish_text"] = await site.inner_text("#publish-state")
    finally:
        await set_loopback("up")
    started = time.monotonic()
    await wait_for(site, "document.getElementById('publish-state').dataset.state === 'live' && "
                   "document.getElementById('feed-status').dataset.state === 'live'",
                   "the contributor to publish again", 40)
    await wait_for(viewer, "window.tvPlayer.state === 'playing'", "the viewer to play again", 30)
    checks["outage_recovered_after_s"] = round(time.monotonic() - started, 1)
    checks["outage_frames"] = await frames_rising(viewer)
    checks["outage_picture"] = await wait_picture(viewer, "camera", 20)

    # 7. The site stops: the server receives nothing, the viewer gets the slate back.
    await site.click("#stop")
    await wait_for(site, "document.getElementById('feed-status').dataset.state === 'offline'",
                   "the contributor's page to say the server receives nothing", 10)
    checks["stopped_status"] = await site.inner_text("#feed-status")
    checks["stopped_publish_state"] = await site.get_attribute("#publish-state", "data-state")
    checks["stopped_picture"] = await wait_picture(viewer, "slate")
    await viewer_ctx.close()
    await site_ctx.close()


async def main() -> int:
    result: dict[str, Any] = {"ok": False, "checks": {}, "page_errors": []}
    with tempfile.TemporaryDirectory() as tmp:
        settings = test_settings(Path(tmp)).with_overrides(video=VideoSettings(
            width=640, height=360, fps=30, bitrate_kbps=1200, keyframe_interval_s=1.0,
            max_viewers=MAX_VIEWERS))
        server = TestServer(create_app(settings), host="127.0.0.1")
        await server.start_server()
        director = await Http.open(str(server.make_url("")))
        try:
            app = server.app
            assert app is not None
            token = await app[keys.FEED_TOKENS].get_or_create(FEED)
            await app[keys.AUTH].add_user("regie", PASSWORD, Role.DIRECTOR)
            await director.sign_in("regie")
            async with asyncio.timeout(150), async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS,
                                                   headless=True)
                try:
                    await run(browser, str(server.make_url("")).rstrip("/"), token, director,
                              result)
                finally:
                    await browser.close()
            result["ok"] = not result["page_errors"]
        except (Failed, TimeoutError) as e:
            result["error"] = str(e) or "timed out"
        except Exception as e:  # any other failure must still end in the JSON line
            result["error"] = f"{type(e).__name__}: {e}"
        finally:
            await director.close()
            await server.close()
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

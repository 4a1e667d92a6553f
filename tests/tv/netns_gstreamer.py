"""GStreamer publishes over WHIP to the real app, inside a network namespace with only lo.

``tests/tv/test_gstreamer.py`` starts this script under ``unshare -n``. The app
runs here on 127.0.0.1; for each case, ``tests/tv/gst_whip.py`` runs under
Debian's Python (GStreamer 1.22's webrtcbin, RSA DTLS certificate) and publishes
the feed ``afrique`` for a few seconds, while this script reads what the server
receives: the feed's state, size and frame rate, and the colour of its picture.
Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer
from PIL import Image

from server import keys
from server.app import create_app
from tests.helpers import ROOT, test_settings
from tests.tv.peers import colour_name
from tv.model import FeedState

GST_PYTHON = "/usr/bin/python3"
CLIENT = ROOT / "tests" / "tv" / "gst_whip.py"
PUBLISH_S = 6.0
CASES = {"h264": ["h264"], "vp8": ["vp8"], "h264-sendrecv": ["h264", "sendrecv"]}


async def publish(app: Any, url: str, token: str, args: list[str]) -> dict[str, Any]:
    client = await asyncio.create_subprocess_exec(
        GST_PYTHON, str(CLIENT), url, token, str(PUBLISH_S), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    seen: dict[str, Any] = {"live": False}
    tv = app[keys.TV]
    while client.returncode is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.wait(), 0.5)
        stats = next(s for s in tv.feed_stats() if s.feed == "afrique")
        if stats.state is FeedState.LIVE and stats.fps:
            seen.update(live=True, width=stats.width, height=stats.height, fps=stats.fps)
            jpeg = tv.snapshot_jpeg("afrique")
            if jpeg is not None:
                image = Image.open(io.BytesIO(jpeg)).convert("RGB")
                seen["colour"] = colour_name(image.getpixel((image.width // 2,
                                                             image.height // 2)))
    out, err = await client.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    seen["client"] = json.loads(lines[-1]) if lines else None
    seen["client_exit"] = client.returncode
    seen["client_stderr"] = err.decode(errors="replace")[-1500:]
    # The publisher has said goodbye (WHIP DELETE): the feed must say so.
    for _ in range(20):
        if next(s for s in tv.feed_stats() if s.feed == "afrique").state is FeedState.OFFLINE:
            seen["offline_after"] = True
            break
        await asyncio.sleep(0.1)
    return seen


async def main() -> int:
    result: dict[str, Any] = {"ok": False, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        server = TestServer(create_app(test_settings(Path(tmp))), host="127.0.0.1")
        await server.start_server()
        try:
            app = server.app
            assert app is not None
            token = await app[keys.FEED_TOKENS].get_or_create("afrique")
            url = str(server.make_url("/whip/afrique"))
            for name, args in CASES.items():
                result["cases"][name] = await publish(app, url, token, args)
            result["ok"] = True
        except Exception as e:  # the JSON line must come out whatever happens
            result["error"] = f"{type(e).__name__}: {e}"
        finally:
            await server.close()
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""A broadcast tool publishes: GStreamer 1.22's webrtcbin over WHIP, as a site would.

GStreamer signs DTLS with an RSA certificate and offers a=setup:actpass; the
server must answer as DTLS server. Everything runs in a private network
namespace with only ``lo`` (tests/tv/netns_gstreamer.py), libnice told to offer
127.0.0.1 only.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import require_namespace, run_in_namespace, unavailable
from tests.tv.netns_gstreamer import GST_PYTHON
from tests.tv.netns_gstreamer import __file__ as SCRIPT

pytestmark = pytest.mark.browser

PROBE = """
import gi
gi.require_version("Gst", "1.0"); gi.require_version("GstWebRTC", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import Gst, GstWebRTC, Nice
Gst.init(None)
missing = [e for e in ("webrtcbin", "x264enc", "vp8enc", "opusenc", "nicesrc", "dtlssrtpenc")
           if Gst.ElementFactory.find(e) is None]
print(" ".join(missing))
"""


def _require_gstreamer() -> None:
    try:
        probe = subprocess.run([GST_PYTHON, "-c", PROBE], capture_output=True, text=True,
                               timeout=30, check=False)
    except FileNotFoundError:
        unavailable(f"{GST_PYTHON} not found (Debian's python3 runs GStreamer's bindings)")
    if probe.returncode != 0 or probe.stdout.strip():
        unavailable("GStreamer 1.22 with webrtcbin, x264, VP8, Opus and libnice is needed "
                    "(Debian: python3-gi gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 "
                    "gstreamer1.0-plugins-{base,good,bad,ugly} gstreamer1.0-nice): "
                    f"{probe.stdout.strip() or probe.stderr.strip()[-300:]}")


def test_gstreamer_publishes_h264_and_vp8_and_the_server_receives_them() -> None:
    require_namespace()
    _require_gstreamer()
    result = run_in_namespace(Path(SCRIPT), timeout=120)
    assert result["ok"] and result["exit_code"] == 0, result
    for name, case in result["cases"].items():
        client = case["client"]
        assert client is not None, (name, case["client_stderr"])
        assert client["status"] == 201 and client["location"].startswith("/whip/afrique/"), \
            (name, client)
        assert "a=setup:actpass" in client["offer"], (name, client["offer"])
        candidates = [line for line in client["offer"] if line.startswith("a=candidate")]
        assert candidates and all(" 127.0.0.1 " in line and " typ host" in line
                                  for line in candidates), (name, candidates)
        assert client["connection_state"] == "connected", (name, client)
        # What the control room would read, and the picture that would go on air.
        assert case["live"] and (case["width"], case["height"]) == (320, 180), (name, case)
        assert case["fps"] >= 20, (name, case)
        assert case["colour"] == "red", (name, case)
        assert client["delete_status"] == 200, (name, client)
        assert case.get("offline_after"), (name, "the feed never said it had gone")

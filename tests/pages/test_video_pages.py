"""The video pages in headless Chromium: a site publishes from /contribute/europe,
a viewer watches / — every WebRTC packet kept on loopback in a private network
namespace (the browser part runs in tests/pages/netns_video.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import require_namespace, run_in_namespace, unavailable

CHROMIUM = os.environ.get("TV_TEST_CHROMIUM", "/usr/bin/chromium")
SCRIPT = Path(__file__).with_name("netns_video.py")

pytestmark = pytest.mark.browser


def _check_sandbox() -> None:
    require_namespace()
    if not Path(CHROMIUM).exists():
        unavailable(f"Chromium not found at {CHROMIUM} (Debian package 'chromium')")


def test_contributor_publishes_and_viewer_sees_it_live() -> None:
    _check_sandbox()
    result = run_in_namespace(SCRIPT)
    checks = result["checks"]
    assert result["ok"] and result["exit_code"] == 0, result

    # Before the show the player plays the server's slate, and says so in words.
    assert checks["before_frames"][1] > checks["before_frames"][0]
    assert checks["before_picture"]["kind"] == "slate"
    assert checks["before_caption"] == "L'émission n'a pas commencé"
    # One viewer more than the server takes is told so, and nobody else notices.
    assert checks["full_caption"] == ("Le direct est complet pour le moment. "
                                      "Nouvel essai automatique…")
    assert checks["full_first_frames"][1] > checks["full_first_frames"][0]

    # The site's page says the server receives its picture.
    assert checks["publish_state"] == "live"
    assert checks["contributor_status"].startswith("Le serveur reçoit votre image : ")

    # Once the Europe duplex is taken: the tally is on air, and the viewer sees
    # the camera, at the programme's size, frames still rising, same connection.
    assert checks["tally_text"] == "À L'ANTENNE"
    picture = checks["live_picture"]
    assert picture["kind"] == "camera"
    assert (picture["width"], picture["height"]) == (640, 360)
    assert checks["live_frames"][1] > checks["live_frames"][0]
    # The contributor's microphone is heard: Opus packets decoded to a second of sound.
    print("sound at the viewer:", checks["live_sound"])
    assert checks["live_sound"]["samples_per_s"] >= 40_000
    assert checks["viewer_state"] == "playing"
    assert checks["same_connection"] is True

    assert checks["cue"]

    # A lost session is replaced by the player itself, and pictures flow again.
    assert checks["reconnected_frames"][1] > checks["reconnected_frames"][0]
    assert checks["reconnected_picture"]["kind"] == "camera"

    # After a network cut, in words first, then both pages are back by themselves.
    assert checks["outage_caption"] == "Reconnexion en cours…"
    assert checks["outage_publish_state"] == "connecting"
    assert checks["outage_frames"][1] > checks["outage_frames"][0]
    assert checks["outage_picture"]["kind"] == "camera"

    # "Arrêter": the page says the server receives nothing; viewers get the slate.
    assert checks["stopped_publish_state"] == "idle"
    assert checks["stopped_status"] == "Le serveur ne reçoit rien"
    assert checks["stopped_picture"]["kind"] == "slate"
    assert result["page_errors"] == []

"""Configuration loading and its errors, the health check and the metrics."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.settings import ConfigError, load_settings
from tests.helpers import ROOT

CONFIG = (ROOT / "config.toml").read_text("utf-8")


def test_the_show_configuration_loads():
    settings = load_settings(ROOT / "config.toml")

    assert settings.event.title == "Le Tour du Monde du Commerce Équitable"
    assert [t.id for t in settings.themes] == ["cooperatives", "growth", "fair-price"]
    assert settings.themes[2].title_fr == "Le prix équitable : que payent les consommateurs ?"
    assert settings.event.timezone == "Europe/Paris"
    assert settings.event.planned_start == datetime(2027, 5, 9, 14, 0,
                                                    tzinfo=ZoneInfo("Europe/Paris"))
    assert settings.event.planned_start.astimezone(UTC) == datetime(2027, 5, 9, 12, 0,
                                                                     tzinfo=UTC)
    assert settings.event.duration_s == 240 * 60
    assert (settings.qa.text_max, settings.qa.author_max) == (500, 60)
    assert (settings.qa.per_viewer.count, settings.qa.per_viewer.window_s) == (5, 600)
    assert (settings.qa.per_ip.count, settings.qa.per_ip.window_s) == (100, 600)
    assert settings.auth.login_failures.count == 5
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert (settings.video.audio_frame_ms, settings.video.max_viewers) == (60, 300)
    assert settings.video.serve


def edited(old: str, new: str, after: str = "") -> str:
    """config.toml with the first ``old`` after ``after`` replaced by ``new``."""
    start = CONFIG.index(after) if after else 0
    at = CONFIG.index(old, start)
    return CONFIG[:at] + new + CONFIG[at + len(old):]


BAD_CONFIGS = {
    "unknown time zone": (edited('timezone = "Europe/Paris"', 'timezone = "Europe/Atlantis"'),
                          "event.timezone"),
    "time zone not a string": (edited('timezone = "Europe/Paris"', "timezone = 1"),
                               "event.timezone"),
    "start not a date": (edited('start = "2027-05-09T14:00"', 'start = "9 mai à 14 h"'),
                         "event.start"),
    "no title": (edited('title = "Le Tour du Monde du Commerce Équitable"\n', ""),
                 "event.title"),
    "text_max too small": (edited("text_max = 500", "text_max = 5"), "qa.text_max"),
    "text_max not a number": (edited("text_max = 500", 'text_max = "500"'), "qa.text_max"),
    "duplicate theme id": (edited('id = "growth"', 'id = "cooperatives"'), "themes[1].id"),
    "theme id with spaces": (edited('id = "fair-price"', 'id = "fair price"'), "themes[2].id"),
    "database scheme": (edited('url = ""', 'url = "mysql://localhost/tv"', "[database]"),
                        "database.url"),
    "port out of range": (edited("port = 8080", "port = 80800"), "http.port"),
    "rate with zero count": (edited("rate_per_viewer = { count = 5,",
                                    "rate_per_viewer = { count = 0,"), "qa.rate_per_viewer"),
    "duplicate threshold": (edited("duplicate_threshold = 0.75", "duplicate_threshold = 2"),
                            "qa.duplicate_threshold"),
    "log format": (edited('format = "json"', 'format = "xml"'), "logging.format"),
    "secure_cookies not a boolean": (edited("secure_cookies = false", 'secure_cookies = "no"'),
                                     "http.secure_cookies"),
    "sound packets of 30 ms": (edited("audio_frame_ms = 60", "audio_frame_ms = 30"),
                               "video.audio_frame_ms"),
    "viewers below zero": (edited("max_viewers = 300", "max_viewers = -1"), "video.max_viewers"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_configuration_names_the_key(tmp_path, case):
    text, key = BAD_CONFIGS[case]
    path = tmp_path / "bad.toml"
    path.write_text(text, "utf-8")

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert key in str(caught.value)


def test_missing_or_broken_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[event\ntitle = 1\n", "utf-8")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_settings(broken)


async def test_run_py_with_a_bad_config_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_CONFIGS["unknown time zone"][0], "utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "run.py"), "--config", str(bad), "--port", "1", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        _, err = await proc.communicate()

    assert proc.returncode == 2
    assert "event.timezone" in err.decode()
    assert "Traceback" not in err.decode()


async def test_healthz(base_url, http):
    status, body, _ = await (await http(base_url)).request("GET", "/healthz")
    assert (status, body["status"]) == (200, "ok")
    assert body["checks"] == {"database": "ok", "database_writes": "ok",
                              "redis": "not_configured", "programme": "ok", "video": "ok"}


async def metrics(client: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The /metrics samples by (name, labels)."""
    status, body, resp = await client.request("GET", "/metrics")
    assert status == 200
    assert resp.content_type == "text/plain"
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def sample(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_metrics_count_questions_clients_and_latency(base_url, http, staff, listen):
    viewer, marie, paul = await http(base_url), await staff("marie"), await staff("paul")
    status, q, _ = await viewer.request("POST", "/api/questions",
                                        {"theme": "growth", "text": "Et les salaires ?"})
    assert status == 201
    for text in ("Première question sur le prix ?", "Deuxième question sur le prix ?"):
        status, _, _ = await viewer.request("POST", "/api/questions",
                                            {"theme": "fair-price", "text": text})
        assert status == 201
    status, _, _ = await marie.request("PATCH", f"/api/questions/{q['id']}",
                                       {"status": "approved", "version": q["version"]})
    assert status == 200
    consoles = [await listen(base_url, "/moderation", c.cookie_header()) for c in (marie, paul)]
    await listen(base_url, "/")

    samples = await metrics(viewer)

    assert sample(samples, "tv_questions", theme="growth", status="approved") == 1
    assert sample(samples, "tv_questions", theme="fair-price", status="pending") == 2
    assert sample(samples, "tv_questions", theme="growth", status="pending") in (None, 0)
    assert sample(samples, "tv_socketio_clients", namespace="/moderation") == 2
    assert sample(samples, "tv_socketio_clients", namespace="/") == 1
    assert sample(samples, "tv_http_request_duration_seconds_count", method="POST",
                  route="/api/questions", status="201") == 3
    assert (sample(samples, "tv_http_request_duration_seconds_count", method="PATCH",
                   route="/api/questions/{id}", status="200")) == 1

    await consoles[0].close()
    # The server learns of the disconnection on its own time: ask again for up to 2 s.
    for _ in range(100):
        connected = sample(await metrics(viewer), "tv_socketio_clients", namespace="/moderation")
        if connected == 1:
            break
        await asyncio.sleep(0.02)
    assert connected == 1


def test_settings_module_reads_relative_sqlite_path(tmp_path: Path):
    """An empty [database] url puts the SQLite file in data/ beside the config file."""
    config = tmp_path / "config.toml"
    config.write_text(CONFIG, "utf-8")
    settings = load_settings(config)
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'tv.sqlite3'}"

"""Processes the benchmarks start, and the temporary configuration they run with.

Every child runs in its own session (Ctrl-C reaches only the benchmark, which
then stops them in order) and receives SIGTERM if the benchmark dies, even by
SIGKILL, so nothing outlives a run.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import math
import os
import re
import resource
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from server.settings import load_settings
from tests.helpers import ROOT

_PR_SET_PDEATHSIG = 1
_TICKS = os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def nearest_rank(values: list[float], p: float) -> float | None:
    """The p-th percentile by nearest rank (p95 of 20 values is the 19th); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process, all its threads included."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Child:
    """A child process; with ``talks`` it speaks JSON lines on stdin/stdout."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, talks: bool) -> None:
        self.name = name
        self.proc = proc
        self.talks = talks

    @classmethod
    async def start(cls, name: str, *args: str, talks: bool = True) -> Child:
        pipe = asyncio.subprocess.PIPE
        proc = await asyncio.create_subprocess_exec(
            *args, cwd=ROOT, stdin=pipe if talks else asyncio.subprocess.DEVNULL,
            stdout=pipe if talks else sys.stderr, stderr=None, limit=1 << 26,
            start_new_session=True, preexec_fn=_die_with_parent)
        return cls(name, proc, talks)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def read(self, within: float) -> dict[str, Any]:
        """The next JSON line, or TimeoutError after ``within`` seconds."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(within):
            line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited with status {await self.proc.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def ask(self, command: dict[str, Any], within: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.read(within)

    def cpu_s(self) -> float:
        return cpu_s(self.pid) if self.proc.returncode is None else 0.0

    def rss_mb(self) -> float:
        return rss_mb(self.pid) if self.proc.returncode is None else 0.0

    async def stop(self, grace: float = 10) -> None:
        """Close stdin (talking children leave by themselves), else SIGTERM; SIGKILL last."""
        if self.proc.returncode is not None:
            return
        if self.talks and self.proc.stdin is not None:
            self.proc.stdin.close()
        else:
            self.proc.terminate()
        for action in (self.proc.terminate, self.proc.kill):
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
                return
            except TimeoutError:
                say(f"{self.name} did not stop in {grace:.0f} s: {action.__name__}")
                action()
        await self.proc.wait()


# --- the server under test ---------------------------------------------------


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string without control characters is a TOML string


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return _toml_str(value) if isinstance(value, str) else str(value)


def bench_config(tmp: Path, db: Path, database_url: str | None = None,
                 extra: dict[str, dict[str, Any]] | None = None) -> Path:
    """config.toml on the SQLite file ``db``, quiet logs, rate limits out of the way.

    ``database_url`` replaces the SQLite file (``db`` then only names the
    configuration file); ``extra`` sets more keys, {section: {key: value}},
    each value written as TOML (strings, numbers, booleans).
    """
    db_url = database_url or f"sqlite:///{db}"
    unlimited = "{ count = 1000000, window_s = 600 }"
    pending: dict[str, dict[str, str]] = {
        "database": {"url": _toml_str(db_url)},
        "redis": {"url": '""'},
        "logging": {"level": '"WARNING"', "format": '"text"'},
        "qa": {"rate_per_viewer": unlimited, "rate_per_ip": unlimited},
        "webrtc": {"host_addresses": '["127.0.0.1"]'},
    }
    for name, values in (extra or {}).items():
        pending.setdefault(name, {}).update({k: _toml_value(v) for k, v in values.items()})
    out: list[str] = []
    section: str | None = None

    def flush() -> None:
        out.extend(f"{k} = {v}" for k, v in pending.pop(section or "", {}).items())

    for line in (ROOT / "config.toml").read_text("utf-8").splitlines():
        header = re.match(r"\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]", line)
        key = re.match(r"\s*([A-Za-z0-9_-]+)\s*=", line)
        if header:
            flush()
            section = None if line.lstrip().startswith("[[") else header.group(1)
        elif key and section in pending and key.group(1) in pending[section]:
            line = f"{key.group(1)} = {pending[section].pop(key.group(1))}"
        out.append(line)
    flush()
    for name, values in pending.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {v}" for k, v in values.items())
    path = tmp / f"{db.stem}.toml"
    path.write_text("\n".join(out) + "\n", "utf-8")
    settings = load_settings(path)  # a broken rewrite fails here, naming the key
    assert database_url is not None or settings.database_url.endswith(str(db)), \
        settings.database_url
    assert settings.qa.per_ip.count == settings.qa.per_viewer.count == 1_000_000
    return path


async def add_moderators(config: Path, names: list[str], password_file: Path) -> None:
    for name in names:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "run.py", "--config", str(config), "adduser", name,
            "--role", "moderator", "--password-file", str(password_file),
            cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent)
        # Its stderr is shown only on failure: adduser logs noise on a clean exit.
        _, errors = await asyncio.wait_for(proc.communicate(), 120)
        if proc.returncode != 0:
            sys.stderr.write(errors.decode(errors="replace"))
            raise RuntimeError(f"run.py adduser {name} failed with status {proc.returncode}")


async def start_server(config: Path, port: int, *extra: str, name: str = "server") -> Child:
    """run.py on a loopback port (``extra``: more of its options), once /healthz answers 200."""
    server = await Child.start(name, sys.executable, "run.py", "--config", str(config),
                               "--host", "127.0.0.1", "--port", str(port), *extra, talks=False)
    url = f"http://127.0.0.1:{port}/healthz"
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server.proc.returncode is not None:
                raise RuntimeError(f"the server exited with status {server.proc.returncode}")
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return server
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    await server.stop()
    raise RuntimeError("the server did not answer /healthz within 60 s")


def raise_nofile() -> None:
    """Thousands of sockets need more descriptors than the usual soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def run_bench(bench: Callable[[argparse.Namespace], Awaitable[dict[str, Any]]],
              args: argparse.Namespace) -> int:
    """Run a benchmark, print its JSON; Ctrl-C or SIGTERM stops every child it started."""

    async def guarded() -> dict[str, Any]:
        # SIGTERM, like Ctrl-C, unwinds through the cleanup that stops every child.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await bench(args)

    try:
        result = asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted; every process it started is stopped")
        return 130
    print(json.dumps(result, indent=2))
    return 0

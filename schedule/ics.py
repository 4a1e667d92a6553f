"""The running order as an iCalendar file (RFC 5545)."""

from __future__ import annotations

from datetime import UTC, datetime

from schedule.model import Plan


def _escape(text: str) -> str:
    return (text.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
            .replace("\n", "\\n"))


def _fold(line: str) -> list[str]:
    """Lines of at most 75 octets, continued with a leading space."""
    out: list[str] = []
    current = ""
    for ch in line:
        if len((current + ch).encode("utf-8")) > (75 if not out else 74):
            out.append(current)
            current = ch
        else:
            current += ch
    out.append(current)
    return [out[0], *(" " + part for part in out[1:])]


def _stamp(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def calendar(plan: Plan, title: str, url: str, now: datetime, lang: str = "fr") -> str:
    """The running order; ``url`` is the configured public page ("" leaves links out).

    Never the request's ``Host``: a calendar file is kept and shared, and
    must not carry whatever address a client chose to write there.
    """
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//tour-du-monde-tv//programme//FR",
             "CALSCALE:GREGORIAN", "METHOD:PUBLISH", f"X-WR-CALNAME:{_escape(title)}"]
    host = url.split("//", 1)[-1].split("/", 1)[0] if url else "tour-du-monde-tv"
    for seg in plan.segments:
        lines += [
            "BEGIN:VEVENT",
            f"UID:{seg.id}-{_stamp(plan.planned_start)}@{host}",
            f"DTSTAMP:{_stamp(now)}",
            f"DTSTART:{_stamp(seg.planned_start)}",
            f"DTEND:{_stamp(seg.planned_end)}",
            f"SUMMARY:{_escape(seg.title(lang))}",
            f"DESCRIPTION:{_escape(title)}",
            *([f"URL:{url}"] if url else []),
            "END:VEVENT",
        ]
    lines.append("END:VCALENDAR")
    return "".join(part + "\r\n" for line in lines for part in _fold(line))

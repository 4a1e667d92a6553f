// Public running order (/programme): every time in the viewer's own time zone,
// the event's (Paris) time beside it when it differs; live from `programme` on `/`.
import {
  ProgrammeClock,
  config,
  connectSocket,
  el,
  formatCountdown,
  formatTime,
  onAirEnds,
  segmentTitle,
  showStatus,
  t,
  themeShort,
  themeTitle,
} from "./common.js";

const $ = (id) => document.getElementById(id);
const list = $("running-order");
const statusNode = $("schedule-status");
const statusText = $("schedule-status-text");
const countdownNode = statusNode.querySelector('[data-role="countdown"]');
const announce = $("schedule-announce");

/** The viewer's zone: no timeZone option anywhere below means this one. */
const viewerZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const clock = new ProgrammeClock();
let programme = null;
let lastOnAir;

/** "Paris" from "Europe/Paris": the city an IANA zone is named after. */
function zoneCity(zone) {
  return (zone || "").split("/").pop().replace(/_/g, " ");
}

/** The long name of the viewer's zone on that date ("heure de l’Équateur"). */
function zoneLongName(at) {
  try {
    const parts = new Intl.DateTimeFormat(config.lang, { timeZoneName: "long" }).formatToParts(new Date(at));
    return parts.find((part) => part.type === "timeZoneName")?.value || viewerZone;
  } catch {
    return viewerZone;
  }
}

const dayFormat = new Intl.DateTimeFormat(config.lang, { weekday: "long", day: "numeric", month: "long", year: "numeric" });
const shortDayFormat = new Intl.DateTimeFormat(config.lang, { weekday: "short", day: "numeric", month: "short" });
/** A day key in the viewer's zone, to notice a show crossing midnight there. */
const dayKey = (iso) => new Date(iso).toLocaleDateString("en-CA");

function minutes(seconds) {
  return t("schedule.minutes", { n: Math.round((seconds || 0) / 60) });
}

function statusOf(segment) {
  if (segment.id === programme.on_air && programme.state !== "ended") return programme.state === "hold" ? "hold" : "on-air";
  if (segment.skipped) return "skipped";
  if (segment.actual_end || (segment.actual_start && segment.id !== programme.on_air)) return "done";
  if (segment.id === programme.next) return "next";
  return "planned";
}

function row(segment, eventZone, firstDay) {
  const status = statusOf(segment);
  const planned = segment.planned_start;
  const expected = segment.actual_start || segment.expected_start;
  const moved = expected && !segment.skipped && Math.abs(Date.parse(expected) - Date.parse(planned)) >= 60_000;
  const day = dayKey(planned);
  const badge = {
    "on-air": el("span", { class: "badge badge--live", text: t("schedule.on_air") }),
    hold: el("span", { class: "badge badge--live", text: t("schedule.hold") }),
    next: el("span", { class: "badge badge--next", text: t("schedule.next") }),
    done: el("span", { class: "status status--answered", text: t("schedule.done") }),
    skipped: el("span", { class: "status status--rejected", text: t("schedule.skipped") }),
  }[status];
  const site = segment.site;
  return el(
    "li",
    {
      class: ["ro-item", `ro-item--${status}`, segment.hard_start && "ro-item--hard"],
      dataset: { segmentId: segment.id, status },
      "aria-current": status === "on-air" || status === "hold" ? "true" : null,
    },
    el(
      "div",
      { class: "ro-item__when" },
      day !== firstDay ? el("span", { class: "ro-item__day", text: shortDayFormat.format(new Date(planned)) }) : null,
      el("time", { class: ["local-time", moved && "local-time--moved"], datetime: planned, text: formatTime(planned) }),
      el(
        "span",
        { class: "ro-item__paris" },
        el("time", { class: "paris-time", datetime: planned, text: formatTime(planned, eventZone) }),
        " ",
        t("schedule.in_city", { city: zoneCity(eventZone) }),
      ),
    ),
    el(
      "div",
      { class: "ro-item__body" },
      el("p", { class: "ro-item__title" }, el("span", { class: "ro-item__title-text", text: segmentTitle(segment) }), badge ? [" ", badge] : null),
      moved
        ? el(
            "p",
            { class: "ro-item__expected" },
            t(segment.actual_start ? "schedule.started_label" : "schedule.expected_label"),
            " ",
            el("time", { class: "expected-time", datetime: expected, text: formatTime(expected) }),
            el("span", { class: "ro-item__paris", text: ` (${formatTime(expected, eventZone)} ${t("schedule.in_city", { city: zoneCity(eventZone) })})` }),
          )
        : null,
      el(
        "p",
        { class: "ro-item__meta" },
        el("span", { class: "ro-item__kind", text: t(`kind.${segment.kind}`) }),
        site ? [" · ", el("span", { class: "ro-item__site", text: site.site || "" })] : null,
        " · ",
        el("span", { class: "ro-item__duration", text: minutes(segment.planned_duration_s) }),
        segment.hard_start ? [" · ", el("span", { class: "ro-item__fixed", text: t("schedule.fixed_time") })] : null,
      ),
      segment.theme ? el("span", { class: "theme-chip", title: themeTitle(segment.theme), text: themeShort(segment.theme) }) : null,
    ),
  );
}

function render() {
  if (!programme) return;
  const segments = programme.segments;
  const eventZone = programme.event?.timezone || config.event_timezone || "Europe/Paris";
  const first = segments[0]?.planned_start || programme.event?.planned_start;
  const firstDay = first ? dayKey(first) : "";
  list.replaceChildren(...segments.map((s) => row(s, eventZone, firstDay)));
  // The event's time is only worth showing when it is not the viewer's.
  const sameZone = segments.every((s) => formatTime(s.planned_start) === formatTime(s.planned_start, eventZone));
  list.classList.toggle("running-order--same-zone", sameZone);

  if (first) {
    $("schedule-date").textContent = dayFormat.format(new Date(first));
    $("viewer-zone-name").textContent = zoneLongName(first);
  }
  $("viewer-timezone").textContent = viewerZone;

  const onAir = segments.find((s) => s.id === programme.on_air);
  const said = onAir && programme.state === "live" ? t("schedule.now_on_air", { title: segmentTitle(onAir) }) : "";
  if (lastOnAir !== undefined && said !== lastOnAir && said) announce.textContent = said;
  lastOnAir = said;
  tick();
}

/** The line above the list: a countdown before, what is on air during, thanks after. */
function tick() {
  if (!programme) return;
  const state = programme.state;
  statusNode.dataset.state = state;
  let text = "";
  let count = "";
  if (state === "before") {
    const next = programme.segments.find((s) => s.id === programme.next) || programme.segments[0];
    const left = clock.secondsUntil(next?.expected_start || programme.event?.planned_start);
    text = left > 0 ? t("now.starts_in") : t("now.starting");
    count = left > 0 ? formatCountdown(left) : "";
  } else if (state === "live" || state === "hold") {
    const onAir = programme.segments.find((s) => s.id === programme.on_air);
    text = state === "hold" ? t("now.hold") : t("schedule.now_on_air", { title: segmentTitle(onAir) });
    const end = onAirEnds(programme);
    const left = end === null ? null : clock.secondsUntil(end);
    count = left !== null && left > 0 ? t("now.time_left", { time: formatCountdown(left) }) : "";
  } else if (state === "ended") {
    text = t("now.ended");
  }
  if (statusText.textContent !== text) statusText.textContent = text;
  if (countdownNode.textContent !== count) countdownNode.textContent = count;
  statusNode.hidden = !text;
}

function receive(body) {
  if (!body || !Array.isArray(body.segments)) return;
  clock.update(body);
  programme = body;
  render();
}

if (config.programme) receive(config.programme);
clock.tick(tick, 250);

const socket = connectSocket("/", $("live-status"), { votes: "batched" });
socket?.on("programme", receive);
if (!socket) showStatus($("live-status"), t("live.unavailable"), "error");

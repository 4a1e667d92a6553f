// Director's control room (/control): the running order with planned, expected
// and actual times, the over/under clock, the next hard start, and the commands.
//
// Every figure that moves with time is computed locally from the last
// `programme` payload and a ProgrammeClock; the server pushes only changes.
import {
  ProgrammeClock,
  config,
  connectSocket,
  el,
  findSegment,
  formatDuration,
  formatSigned,
  formatTime,
  onAirEnds,
  onSessionEnded,
  segmentTitle,
  showStatus,
  siteName,
  t,
  themeShort,
  themeTitle,
} from "./common.js";

const $ = (id) => document.getElementById(id);
const rowsNode = $("running-rows");
const alertNode = $("control-alert");
const noticeNode = $("control-notice");
const endConfirm = $("end-confirm");
const endButton = document.querySelector('[data-command="end"]');

const clock = new ProgrammeClock();
/** The last `programme` payload. */
let programme = null;
/** feed id → "live" | "offline", from the `feeds` push when the video side sends it. */
const feedStates = new Map();
/** A command in flight: further ones wait (no double take). */
let inFlight = false;
/** Space is ignored until then (a held or bounced key must not take twice). */
let spaceLockedUntil = 0;

const PATHS = { start: "start", "take-next": "take", hold: "hold", extend: "extend", end: "end" };

function eventZone() {
  return programme?.event?.timezone || config.event_timezone || "Europe/Paris";
}

/** "3:20" / "12:04" / "1:02:03" / "3 j 1:02:03": the director's short durations. */
function short(seconds) {
  const total = Math.floor(Math.abs(seconds || 0));
  if (total >= 86400) return `${t("time.days_short", { d: Math.floor(total / 86400) })} ${short(total % 86400)}`;
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

/** "20 min", or "2:30" for a length that is not whole minutes. */
function lengthText(seconds) {
  return seconds % 60 === 0 ? t("schedule.minutes", { n: seconds / 60 }) : short(seconds);
}

function setText(node, text) {
  if (node && node.textContent !== text) node.textContent = text;
}

// ---------------------------------------------------------------- time that moves

function onAirIndex() {
  return programme ? programme.segments.findIndex((s) => s.id === programme.on_air) : -1;
}

/** Where the plan wanted the segment on air to end: the next one's planned start. */
function plannedEndOfOnAir() {
  const list = programme.segments;
  const i = onAirIndex();
  if (i < 0) return null;
  const next = list[i + 1];
  return Date.parse(next ? next.planned_start : list[i].planned_start) + (next ? 0 : list[i].planned_duration_s * 1000);
}

/**
 * Seconds the show has slipped since the payload without anyone pressing
 * anything: while held past the segment's end, or before a start that is late.
 * The server's over/under, heavy/light and expected starts all move by this.
 */
function drift() {
  const ou = programme.over_under_s || 0;
  if (programme.state === "hold") {
    const plannedEnd = plannedEndOfOnAir();
    if (plannedEnd === null) return 0;
    // At the payload the held segment counted as ending at plannedEnd + ou.
    return Math.max(0, (clock.now() - (plannedEnd + ou * 1000)) / 1000);
  }
  if (programme.state === "before" && ou > 0) return Math.max(0, clock.sinceUpdate());
  return 0;
}

/** Index of the next hard start after the segment on air (the one drift moves up to). */
function nextHardIndex() {
  const id = programme.next_hard_start?.segment_id;
  return id ? programme.segments.findIndex((s) => s.id === id) : programme.segments.length;
}

function expectedStart(segment, index, slip) {
  const at = Date.parse(segment.expected_start);
  if (!slip || segment.actual_start || segment.hard_start) return at;
  if (index > onAirIndex() && index < nextHardIndex()) return at + slip * 1000;
  return at;
}

// ---------------------------------------------------------------- rendering

function stateLabel(state) {
  return t(`control.state.${state || "before"}`);
}

function takeButton(segment) {
  const onAir = segment.id === programme.on_air && programme.state !== "ended";
  return el(
    "button",
    {
      type: "button",
      class: "button button--small command",
      dataset: { command: "take", segmentId: segment.id },
      "aria-label": t("control.take_label", { title: segmentTitle(segment) }),
      disabled: onAir || programme.state === "ended",
    },
    t("control.cmd.take"),
  );
}

function siteCell(segment) {
  const site = segment.site;
  if (!site) return el("td", { class: "col-site" });
  const feed = feedStates.get(segment.feed);
  return el(
    "td",
    { class: "col-site" },
    el("span", { class: "site-name" }, el("strong", { text: siteName(site) }), site.site ? ` · ${site.site}` : ""),
    " ",
    el(
      "span",
      { class: "site-clock" },
      el("time", { class: "site-time", dataset: { timezone: site.timezone || "" } }),
      " ",
      el("span", { class: "site-zone", text: t("control.local_time") }),
    ),
    el("span", { class: "site-start", dataset: { timezone: site.timezone || "" } }),
    feed ? el("span", { class: ["feed-state", `feed-state--${feed}`], text: t(`control.feed.${feed}`) }) : null,
  );
}

function row(segment, index) {
  const zone = eventZone();
  const isOnAir = segment.id === programme.on_air && programme.state !== "ended";
  const isNext = segment.id === programme.next;
  const done = Boolean(segment.actual_end) && !isOnAir;
  return el(
    "tr",
    {
      class: [
        "segment-row",
        isOnAir && "segment-row--on-air",
        isOnAir && programme.state === "hold" && "segment-row--hold",
        isNext && "segment-row--next",
        segment.skipped && "segment-row--skipped",
        done && "segment-row--done",
        segment.hard_start && "segment-row--hard",
      ],
      dataset: { segmentId: segment.id, index },
      "aria-current": isOnAir ? "true" : null,
    },
    el("td", { class: "col-time" }, el("time", { class: "planned-start", datetime: segment.planned_start, text: formatTime(segment.planned_start, zone, { seconds: true }) }),
      segment.hard_start ? el("span", { class: "hard-mark", title: t("control.hard_title"), text: t("control.hard_short") }) : null),
    el("td", { class: "col-time" }, el("time", { class: "expected-start" })),
    el("td", { class: "col-time", text: lengthText(segment.planned_duration_s) }),
    el("td", { class: "col-time" }, segment.actual_start ? el("time", { class: "actual-start", datetime: segment.actual_start, text: formatTime(segment.actual_start, zone, { seconds: true }) }) : "—"),
    el("td", { class: "col-time" }, segment.actual_end ? el("time", { class: "actual-end", datetime: segment.actual_end, text: formatTime(segment.actual_end, zone, { seconds: true }) }) : "—"),
    el(
      "td",
      { class: "col-segment" },
      isOnAir ? el("span", { class: "badge badge--live", text: programme.state === "hold" ? t("control.state.hold") : t("control.on_air_badge") }) : null,
      isNext ? el("span", { class: "badge badge--next", text: t("control.next_badge") }) : null,
      segment.skipped ? el("span", { class: "status status--rejected", text: t("control.skipped") }) : null,
      " ",
      el("span", { class: "segment-title", text: segmentTitle(segment) }),
      el(
        "span",
        { class: "segment-meta" },
        t(`kind.${segment.kind}`),
        segment.theme ? [" · ", el("span", { title: themeTitle(segment.theme), text: themeShort(segment.theme) })] : null,
      ),
    ),
    siteCell(segment),
    el("td", { class: "col-actions" }, takeButton(segment)),
  );
}

function render() {
  if (!programme) return;
  // Keep the keyboard focus on the same row's button across a rebuild.
  const focused = document.activeElement?.closest?.("#running-rows [data-command]")?.dataset.segmentId;
  rowsNode.replaceChildren(...programme.segments.map(row));
  if (focused) rowsNode.querySelector(`[data-command="take"][data-segment-id="${CSS.escape(focused)}"]`)?.focus();

  const state = programme.state;
  const stateNode = $("state");
  stateNode.dataset.state = state;
  setText(stateNode, stateLabel(state));
  document.body.dataset.state = state;

  const event = programme.event || {};
  const banner = $("rehearsal-banner");
  banner.hidden = !event.rehearsal;
  if (event.rehearsal) setText(banner, t("control.rehearsal", { speed: new Intl.NumberFormat(config.lang).format(event.speed || 1) }));

  const onAir = findSegment(programme, programme.on_air);
  const next = findSegment(programme, programme.next);
  setText($("on-air-title"), onAir && state !== "ended" ? segmentTitle(onAir) : t("control.nothing_on_air"));
  setText($("next-title"), next ? segmentTitle(next) : "—");
  setText($("take-next-target"), next ? segmentTitle(next) : state === "ended" ? "" : t("control.take_next_ends"));
  setText($("table-zone"), t("control.times_in", { zone: eventZone() }));

  const enabled = {
    start: state === "before" || state === "ended",
    "take-next": state !== "ended",
    hold: state === "live",
    extend: state === "live" || state === "hold",
    end: state === "live" || state === "hold",
  };
  for (const button of document.querySelectorAll(".command-bar [data-command]")) {
    button.disabled = inFlight || !enabled[button.dataset.command];
  }
  if (!enabled.end) closeEndConfirm();
  tick();
}

/** Everything that moves with time (every 250 ms). */
function tick() {
  if (!programme) return;
  const now = clock.now();
  const zone = eventZone();
  const slip = drift();
  setText($("show-clock"), formatTime(now, zone, { seconds: true }));

  // Over/under: the server's figure, plus what a hold or a late start has added since.
  const ou = (programme.over_under_s || 0) + slip;
  const rounded = Math.round(ou);
  const ouNode = $("over-under");
  setText(ouNode, formatSigned(ou));
  ouNode.dataset.sign = rounded > 0 ? "late" : rounded < 0 ? "early" : "even";
  setText($("over-under-words"), rounded > 0 ? t("control.late") : rounded < 0 ? t("control.early") : t("control.on_time"));

  // The segment on air.
  const onAir = findSegment(programme, programme.on_air);
  const end = onAirEnds(programme);
  const left = end === null ? null : (end - now) / 1000;
  const leftNode = $("time-left");
  setText(leftNode, programme.state === "hold" ? t("control.held") : left === null ? "—" : formatDuration(Math.max(0, Math.ceil(left))));
  leftNode.dataset.urgent = left !== null && left <= 30 ? "true" : "false";
  setText($("elapsed"), onAir?.actual_start && programme.state !== "ended" ? formatDuration(Math.max(0, (now - Date.parse(onAir.actual_start)) / 1000)) : "—");
  const next = findSegment(programme, programme.next);
  if (next) {
    const index = programme.segments.indexOf(next);
    const at = expectedStart(next, index, slip);
    setText($("next-at"), t("control.next_at", { time: formatTime(at, zone, { seconds: true }), in: short(Math.max(0, (at - now) / 1000)) }));
  } else {
    setText($("next-at"), "");
  }

  tickHardStart(now, slip, zone);

  programme.segments.forEach((segment, index) => {
    const tr = rowsNode.children[index];
    if (!tr) return;
    const expected = tr.querySelector(".expected-start");
    const at = expectedStart(segment, index, slip);
    setText(expected, formatTime(at, zone, { seconds: true }));
    expected.dateTime = new Date(at).toISOString();
    const moved = Math.abs(at - Date.parse(segment.planned_start)) >= 1000;
    expected.classList.toggle("expected-start--moved", moved && !segment.skipped);
    const siteTime = tr.querySelector(".site-time");
    if (siteTime) {
      setText(siteTime, formatTime(now, siteTime.dataset.timezone, { seconds: true }));
      setText(tr.querySelector(".site-start"), t("control.site_start", { time: formatTime(at, siteTime.dataset.timezone) }));
    }
  });
}

function tickHardStart(now, slip, zone) {
  const node = $("hard-start");
  const hard = programme.next_hard_start;
  if (!hard || programme.state === "ended") {
    node.dataset.load = "none";
    setText(node, t("control.no_hard_start"));
    return;
  }
  const segment = findSegment(programme, hard.segment_id);
  // "Quito, Équateur" → "Équateur": the country is what everyone calls the link.
  const place = segment?.site?.site ? segment.site.site.split(",").pop().trim() : segmentTitle(segment);
  const at = Date.parse(hard.at);
  const heavy = (hard.heavy_s || 0) + slip;
  const load = Math.round(heavy) > 0 ? "heavy" : Math.round(heavy) < 0 ? "light" : "even";
  node.dataset.load = load;
  const head = t("control.hard_start", { name: place, time: formatTime(at, zone), in: short(Math.max(0, (at - now) / 1000)) });
  const tail = load === "heavy" ? t("control.heavy", { time: short(heavy) }) : load === "light" ? t("control.light", { time: short(heavy) }) : t("control.even");
  setText(node, `${head} — ${tail}`);
}

// ---------------------------------------------------------------- commands

function goToLogin() {
  window.location.assign(`/login?next=${encodeURIComponent("/control")}`);
}

function notice(text) {
  showStatus(noticeNode, text, "success");
  clearTimeout(noticeNode._timer);
  noticeNode._timer = setTimeout(() => showStatus(noticeNode, ""), 4000);
}

async function command(name, { segmentId = null, seconds = null } = {}) {
  if (inFlight) return;
  const path = name === "take" ? `take/${encodeURIComponent(segmentId)}` : PATHS[name];
  if (!path) return;
  inFlight = true;
  render();
  showStatus(alertNode, "");
  try {
    let response;
    try {
      response = await fetch(`/api/programme/${path}`, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRF-Token": config.csrf_token || "", "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(name === "extend" ? { seconds } : {}),
      });
    } catch {
      showStatus(alertNode, t("error.network"), "error");
      return;
    }
    if (response.status === 401) {
      goToLogin();
      return;
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      showStatus(alertNode, body?.message || t("error.generic"), "error");
      return;
    }
    if (body && Array.isArray(body.segments)) receive(body);
    const onAir = findSegment(programme, programme?.on_air);
    notice(name === "extend" ? t("control.done.extend", { time: formatSigned(seconds) }) : t(`control.done.${name}`, { title: segmentTitle(onAir) }));
  } finally {
    inFlight = false;
    render();
  }
}

function openEndConfirm() {
  endConfirm.hidden = false;
  endButton.setAttribute("aria-expanded", "true");
  endConfirm.querySelector('[data-confirm="cancel"]').focus();
  clearTimeout(endConfirm._timer);
  endConfirm._timer = setTimeout(closeEndConfirm, 15000);
}

function closeEndConfirm() {
  if (endConfirm.hidden) return;
  const hadFocus = endConfirm.contains(document.activeElement);
  endConfirm.hidden = true;
  endButton.setAttribute("aria-expanded", "false");
  clearTimeout(endConfirm._timer);
  if (hadFocus) endButton.focus();
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-command], button[data-confirm]");
  if (!button || button.disabled) return;
  // A mouse click must not leave focus on the button: Space would press it again
  // instead of taking the next segment.
  if (event.detail > 0) button.blur();
  const name = button.dataset.command;
  if (button.dataset.confirm === "end") {
    closeEndConfirm();
    command("end");
  } else if (button.dataset.confirm === "cancel") {
    closeEndConfirm();
  } else if (name === "end") {
    if (endConfirm.hidden) openEndConfirm();
    else closeEndConfirm();
  } else if (name === "extend") {
    command("extend", { seconds: Number(button.dataset.seconds) });
  } else if (name === "take") {
    command("take", { segmentId: button.dataset.segmentId });
  } else if (name) {
    command(name);
  }
});

/** Focus in a field or on a control: Space belongs to it, not to the shortcut. */
function spaceBelongsTo(target) {
  if (!(target instanceof Element)) return false;
  return Boolean(target.closest("input, textarea, select, button, a[href], summary, [contenteditable=''], [contenteditable='true'], [role='button'], dialog"));
}

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !endConfirm.hidden) {
    event.preventDefault();
    closeEndConfirm();
    return;
  }
  if (event.key !== " " || event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey || event.shiftKey) return;
  if (spaceBelongsTo(event.target)) return;
  event.preventDefault(); // no page scroll
  if (event.repeat || Date.now() < spaceLockedUntil || !endConfirm.hidden) return;
  const take = document.querySelector('.command-bar [data-command="take-next"]');
  if (!take || take.disabled) return;
  spaceLockedUntil = Date.now() + 1000;
  command("take-next");
});

// ---------------------------------------------------------------- live

function receive(body) {
  if (!body || !Array.isArray(body.segments)) return;
  clock.update(body);
  programme = body;
  render();
}

if (config.programme) receive(config.programme);
clock.tick(tick, 250);

const socket = connectSocket("/control", $("live-status"));
if (socket) {
  socket.on("programme", receive);
  socket.on("feeds", (feeds) => {
    if (!Array.isArray(feeds)) return;
    let changed = false;
    for (const feed of feeds) {
      if (feedStates.get(feed.feed) !== feed.state) changed = true;
      feedStates.set(feed.feed, feed.state);
    }
    if (changed) render();
  });
  // The session ended or the role changed: the server closes this socket.
  socket.on("signed_out", onSessionEnded(goToLogin));
  socket.on("connect_error", async () => {
    // Refused at connect: the session has probably ended.
    if (socket.active) return;
    try {
      const response = await fetch("/api/session", { credentials: "same-origin" });
      if (response.status === 401) goToLogin();
    } catch {
      /* the live status line already says the connection is lost */
    }
  });
}

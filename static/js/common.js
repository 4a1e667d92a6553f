// Shared helpers for every page: strings, page config, JSON fetch, DOM builder,
// time formatting, Socket.IO connection. No framework, no build step.

function readEmbeddedJSON(id, fallback) {
  const node = document.getElementById(id);
  if (!node) return fallback;
  try {
    return JSON.parse(node.textContent || "null") ?? fallback;
  } catch {
    return fallback;
  }
}

const strings = readEmbeddedJSON("i18n", {});

/** The page configuration the server embedded (lang, themes, limits, ...). */
export const config = readEmbeddedJSON("page-config", {});

/** The page language: "fr" or "en". */
/**
 * When the server says a staff session ended, go and sign in again, unless
 * this very page is signing out (the staff bar's form): its own answer leads
 * to the watch page, and must not be overtaken by the socket's news.
 */
let signingOut = false;
document.querySelector(".staff-badge__form")?.addEventListener("submit", () => {
  signingOut = true;
});
export function onSessionEnded(goToLogin) {
  return () => {
    if (!signingOut) goToLogin();
  };
}

export const lang = config.lang || document.documentElement.lang || "fr";

/**
 * The UI string for `key` in the page language, with `{name}` placeholders
 * replaced from `params`. A missing key shows the key itself, so it is noticed.
 */
export function t(key, params) {
  let text = Object.prototype.hasOwnProperty.call(strings, key) ? strings[key] : key;
  if (params) {
    text = text.replace(/\{(\w+)\}/g, (whole, name) =>
      Object.prototype.hasOwnProperty.call(params, name) ? String(params[name]) : whole,
    );
  }
  return text;
}

const pluralRules = new Intl.PluralRules(lang);

/** `t()` of `${base}.${plural category of n}` (falls back to `${base}.other`). */
export function tn(base, n, params = {}) {
  const all = { n: formatNumber(n), ...params };
  const key = `${base}.${pluralRules.select(n)}`;
  return Object.prototype.hasOwnProperty.call(strings, key) ? t(key, all) : t(`${base}.other`, all);
}

const numberFormat = new Intl.NumberFormat(lang);
export function formatNumber(n) {
  return numberFormat.format(n);
}

/** Number of characters as the server counts them (code points, not UTF-16 units). */
export function charCount(text) {
  return Array.from(text).length;
}

// ---------------------------------------------------------------- themes

const themeTitles = new Map((config.themes || []).map((theme) => [theme.id, theme.title]));

export function themeTitle(id) {
  return themeTitles.get(id) || id || "";
}

/** The part of a theme title before its colon: "Le prix équitable". */
export function themeShort(id) {
  const title = themeTitle(id);
  const cut = title.search(/\s*:/);
  return cut > 0 ? title.slice(0, cut) : title;
}

// ---------------------------------------------------------------- DOM

/**
 * Build an element. `attrs`: `class`, `text`, `dataset` (object), `on` (object of
 * listeners), booleans (true sets an empty attribute, false/null/undefined skips),
 * anything else as an attribute. Children: nodes, strings (as text), arrays, or
 * null/false (skipped). Text always goes through text nodes, never HTML parsing.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
    else if (name === "text") node.textContent = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "on") for (const [type, fn] of Object.entries(value)) node.addEventListener(type, fn);
    else if (name === "value" && "value" in node) node.value = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  appendChildren(node, children);
  return node;
}

function appendChildren(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) appendChildren(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Show `text` in a status/alert region. `kind`: "success" | "error" | "info". */
export function showStatus(node, text, kind = "info") {
  if (!node) return;
  node.dataset.kind = kind;
  node.textContent = text || "";
  node.hidden = !text;
}

/**
 * Disable `button` for `seconds` (a 429's Retry-After), then enable it again.
 * While waiting, `onTick(remaining)` is called every second when given.
 */
export function disableFor(button, seconds, onTick) {
  if (!button) return;
  let remaining = Math.max(1, Math.ceil(seconds));
  button.disabled = true;
  clearInterval(button._retryTimer);
  onTick?.(remaining);
  button._retryTimer = setInterval(() => {
    remaining -= 1;
    if (remaining <= 0) {
      clearInterval(button._retryTimer);
      button.disabled = false;
      onTick?.(0);
    } else {
      onTick?.(remaining);
    }
  }, 1000);
}

// ---------------------------------------------------------------- HTTP

/** An HTTP request that did not succeed: status 0 means the network failed. */
export class ApiError extends Error {
  constructor({ status, code, message, retryAfter = null, body = null }) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.body = body;
  }
}

function parseRetryAfter(value) {
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, (date - Date.now()) / 1000);
}

/**
 * fetch() a JSON API. Resolves with the parsed body (null for an empty one);
 * rejects with an ApiError carrying status, code, the server's localized
 * message and Retry-After seconds. `json`: a body to send as JSON.
 * `csrf`: true to send the staff X-CSRF-Token header. `timeoutMs`: give up
 * waiting after that long (status 0, code "timeout"): the server may still
 * have done what was asked, so the caller must not take it for a refusal.
 */
export async function fetchJSON(url, { method = "GET", json, csrf = false, headers = {}, timeoutMs = 0 } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  if (csrf && config.csrf_token) init.headers["X-CSRF-Token"] = config.csrf_token;

  // setTimeout + AbortController rather than AbortSignal.timeout(): the
  // timer also covers reading the body, and tests can drive it with a fake clock.
  let timedOut = false;
  let timer = null;
  if (timeoutMs > 0) {
    const controller = new AbortController();
    init.signal = controller.signal;
    timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timeoutMs);
  }
  const failed = () =>
    timedOut
      ? new ApiError({ status: 0, code: "timeout", message: t("error.timeout") })
      : new ApiError({ status: 0, code: "network", message: t("error.network") });

  try {
    let response;
    try {
      response = await fetch(url, init);
    } catch {
      throw failed();
    }
    let body = null;
    const type = response.headers.get("Content-Type") || "";
    if (type.includes("json")) {
      try {
        body = await response.json();
      } catch {
        body = null;
      }
    }
    // An answer cut off half-way is no answer at all.
    if (timedOut) throw failed();
    if (!response.ok) {
      const fallback = response.status === 429 ? t("error.too_many") : t("error.generic");
      throw new ApiError({
        status: response.status,
        code: (body && body.error) || `http_${response.status}`,
        message: (body && body.message) || fallback,
        retryAfter: parseRetryAfter(response.headers.get("Retry-After")),
        body,
      });
    }
    return body;
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------- time

const relativeFormat = new Intl.RelativeTimeFormat(lang, { numeric: "auto" });

/** "il y a 3 min" style age of an ISO timestamp. */
export function relativeTime(iso, now = Date.now()) {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return "";
  const seconds = Math.round((then - now) / 1000);
  const abs = Math.abs(seconds);
  if (abs < 45) return t("time.just_now");
  if (abs < 3600) return relativeFormat.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return relativeFormat.format(Math.round(seconds / 3600), "hour");
  return relativeFormat.format(Math.round(seconds / 86400), "day");
}

/** "14:35" in the event's time zone (Europe/Paris unless told otherwise). */
export function formatClock(iso, timeZone = "Europe/Paris") {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  try {
    return new Intl.DateTimeFormat(lang, { hour: "numeric", minute: "2-digit", timeZone }).format(date);
  } catch {
    return new Intl.DateTimeFormat(lang, { hour: "numeric", minute: "2-digit" }).format(date);
  }
}

/** Full date and time, for a `title` tooltip. */
export function formatDateTime(iso, timeZone = "Europe/Paris") {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return new Intl.DateTimeFormat(lang, { dateStyle: "long", timeStyle: "short", timeZone }).format(date);
}

/** Refresh every `time[data-relative]` below `root` (call on a timer). */
export function refreshRelativeTimes(root = document) {
  const now = Date.now();
  for (const node of root.querySelectorAll("time[data-relative]")) {
    node.textContent = relativeTime(node.dateTime, now);
  }
}

/** A `<time>` element showing the age of `iso`, kept fresh by refreshRelativeTimes. */
export function ageElement(iso, className = "age") {
  return el("time", {
    class: className,
    datetime: iso,
    title: formatDateTime(iso),
    dataset: { relative: "" },
    text: relativeTime(iso),
  });
}

// ---------------------------------------------------------------- programme clock

/**
 * The show's clock between two `programme` payloads. Pages never tick from
 * pushes (they come only at changes): at each payload `update()` notes the
 * server's time and when it was received, and `now()` runs on from there
 * locally, `event.speed` times faster in a rehearsal.
 */
export class ProgrammeClock {
  constructor(programme = null) {
    this.serverMs = Date.now();
    this.receivedAt = Date.now();
    this.offset = 0;
    this.speed = 1;
    if (programme) this.update(programme);
  }

  /** Take the server time of a fresh payload (call it as soon as it arrives). */
  update(programme) {
    this.receivedAt = Date.now();
    const server = Date.parse(programme?.server_time);
    this.serverMs = Number.isNaN(server) ? this.receivedAt : server;
    this.offset = this.serverMs - this.receivedAt;
    const speed = Number(programme?.event?.speed);
    this.speed = Number.isFinite(speed) && speed > 0 ? speed : 1;
  }

  /** Show time now, in epoch milliseconds. */
  now() {
    return this.serverMs + (Date.now() - this.receivedAt) * this.speed;
  }

  /** Show seconds elapsed since the payload (what the server's figures have aged by). */
  sinceUpdate() {
    return ((Date.now() - this.receivedAt) * this.speed) / 1000;
  }

  /** Show seconds from now until `iso` (negative once passed); null without a time. */
  secondsUntil(iso) {
    const at = typeof iso === "number" ? iso : Date.parse(iso ?? "");
    return Number.isNaN(at) ? null : (at - this.now()) / 1000;
  }

  /** Call `fn(nowMs)` now and every `everyMs` real milliseconds; returns a stop function. */
  tick(fn, everyMs = 250) {
    fn(this.now());
    const id = setInterval(() => fn(this.now()), everyMs);
    return () => clearInterval(id);
  }
}

const timeFormats = new Map();

/**
 * "08:50" (24-hour) for an ISO string or epoch ms, in `timeZone` (undefined:
 * the viewer's own zone). `seconds`: "08:50:07".
 */
export function formatTime(when, timeZone, { seconds = false } = {}) {
  const date = new Date(typeof when === "number" ? when : Date.parse(when ?? ""));
  if (Number.isNaN(date.getTime())) return "";
  const key = `${timeZone || ""}|${seconds}`;
  let format = timeFormats.get(key);
  if (!format) {
    const options = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
    if (seconds) options.second = "2-digit";
    try {
      format = new Intl.DateTimeFormat(lang, { ...options, timeZone });
    } catch {
      format = new Intl.DateTimeFormat(lang, options); // an unknown zone: the viewer's
    }
    timeFormats.set(key, format);
  }
  return format.format(date);
}

const pad2 = (n) => String(n).padStart(2, "0");

/** "04:05" or "1:04:05" for a number of seconds (its absolute value, rounded down). */
export function formatDuration(seconds) {
  const total = Math.floor(Math.abs(Number(seconds) || 0));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  return h ? `${h}:${pad2(m)}:${pad2(s)}` : `${pad2(m)}:${pad2(s)}`;
}

/** "+02:35" (late) or "-00:40" (early); under half a second is "+00:00". */
export function formatSigned(seconds) {
  const value = Math.round(Number(seconds) || 0);
  return `${value < 0 ? "-" : "+"}${formatDuration(value)}`;
}

/**
 * A countdown in words for viewers: "2 j 03 h 12 min", "3 h 12 min",
 * "12 min 05 s", "45 s". Counts up to the next whole second.
 */
export function formatCountdown(seconds) {
  const total = Math.max(0, Math.ceil(Number(seconds) || 0));
  const d = Math.floor(total / 86400);
  const h = Math.floor((total % 86400) / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  if (d) return t("time.countdown_days", { d, h: pad2(h), m: pad2(m) });
  if (h) return t("time.countdown_hours", { h, m: pad2(m) });
  if (m) return t("time.countdown_minutes", { m, s: pad2(s) });
  return t("time.countdown_seconds", { s });
}

/** A segment's title in the page language. */
export function segmentTitle(segment) {
  if (!segment) return "";
  return (lang === "en" && segment.title_en) || segment.title || segment.id || "";
}

/** A duplex site's name ("Afrique") in the page language. */
export function siteName(site) {
  if (!site) return "";
  return (lang === "en" && site.name_en) || site.name || "";
}

/**
 * When the segment on air will really end by itself: a hard start cuts it
 * earlier, and the segment just before a hard start runs on until it.
 * Null while held, before and after the show.
 */
export function onAirEnds(programme) {
  if (!programme || programme.state !== "live" || !programme.on_air_ends) return null;
  let end = Date.parse(programme.on_air_ends);
  const hard = programme.next_hard_start;
  if (hard?.at) {
    const at = Date.parse(hard.at);
    const list = programme.segments || [];
    const index = list.findIndex((s) => s.id === programme.on_air);
    const next = index >= 0 ? list[index + 1] : null;
    if (next && next.id === hard.segment_id) end = at;
    else end = Math.min(end, at);
  }
  return Number.isNaN(end) ? null : end;
}

/** The segment with `id` in a programme payload, or null. */
export function findSegment(programme, id) {
  if (!id || !Array.isArray(programme?.segments)) return null;
  return programme.segments.find((s) => s.id === id) || null;
}

// ---------------------------------------------------------------- realtime

/**
 * Connect to a Socket.IO namespace with the vendored client (global `io`).
 * `statusNode`, when given, says when the live connection is lost or back.
 */
export function connectSocket(namespace, statusNode, auth = undefined) {
  if (typeof window.io !== "function") {
    showStatus(statusNode, t("live.unavailable"), "error");
    return null;
  }
  const socket = window.io(namespace, { transports: ["websocket", "polling"], tryAllTransports: true, auth });
  let wasConnected = false;
  socket.on("connect", () => {
    if (wasConnected) showStatus(statusNode, t("live.reconnected"), "success");
    else showStatus(statusNode, "", "info");
    wasConnected = true;
    if (statusNode) setTimeout(() => statusNode.dataset.kind === "success" && showStatus(statusNode, ""), 4000);
  });
  socket.on("disconnect", (reason) => {
    if (reason !== "io client disconnect") showStatus(statusNode, t("live.lost"), "error");
  });
  return socket;
}

// ---------------------------------------------------------------- language switch

// The header's language links are plain `?lang=xx`; keep the page's other query
// parameters (e.g. /login?next=...) when switching.
for (const link of document.querySelectorAll("a[data-lang-switch]")) {
  const url = new URL(window.location.href);
  url.searchParams.set("lang", link.dataset.langSwitch);
  url.hash = "";
  link.href = url.pathname + url.search;
}

// Watch page (/): programme now/next, ask form, "my questions", public questions with votes.
import {
  ageElement,
  charCount,
  config,
  connectSocket,
  disableFor,
  el,
  fetchJSON,
  findSegment,
  formatCountdown,
  formatNumber,
  formatTime,
  onAirEnds,
  ProgrammeClock,
  refreshRelativeTimes,
  segmentTitle,
  showStatus,
  t,
  themeShort,
  themeTitle,
  tn,
} from "./common.js";
import { WhepPlayer } from "./player.js";
import { isAmbiguous, retrying, retrySettings } from "./retry.js";

const PUBLIC_STATUSES = new Set(["approved", "answered"]);
const textMax = Number(config.limits?.text_max) || 500;
const authorMax = Number(config.limits?.author_max) || 60;

/** Single sources of truth, keyed by question id. */
const publicQuestions = new Map();
const myQuestions = new Map();
let onAirId = null;
let sortOrder = "popular";
let themeFilter = "";

const $ = (id) => document.getElementById(id);
const nodes = {
  form: $("ask-form"),
  theme: $("ask-theme"),
  text: $("ask-text"),
  author: $("ask-author"),
  submit: $("ask-submit"),
  counter: $("ask-counter"),
  askStatus: $("ask-status"),
  askAnnounce: $("ask-announce"),
  retry: $("ask-retry"),
  retryText: $("ask-retry-text"),
  retryCancel: $("ask-retry-cancel"),
  retryAgain: $("ask-retry-again"),
  mine: $("my-questions"),
  mineEmpty: $("my-questions-empty"),
  public: $("public-questions"),
  publicEmpty: $("public-questions-empty"),
  publicStatus: $("public-status"),
  publicTheme: $("public-theme"),
  programme: $("programme-now"),
  liveStatus: $("live-status"),
  onAir: $("on-air-question"),
};

// ---------------------------------------------------------------- player

const player = new WhepPlayer($("player"), { iceServers: config.ice_servers || [] });
// For tests and support: what the player is doing, and whether pictures flow.
window.tvPlayer = {
  get state() {
    return player.state;
  },
  get sessions() {
    return player.sessions;
  },
  framesDecoded: () => player.framesDecoded(),
  inboundAudio: () => player.inboundAudio(),
};
player.start();

// ---------------------------------------------------------------- ask form

const AUTHOR_STORAGE_KEY = "tdmce.author";
try {
  const saved = localStorage.getItem(AUTHOR_STORAGE_KEY);
  if (saved && !nodes.author.value) nodes.author.value = saved.slice(0, authorMax);
} catch {
  /* storage may be disabled: the field just starts empty */
}

function updateCounter() {
  const count = charCount(nodes.text.value);
  nodes.counter.textContent = t("ask.counter", { count: formatNumber(count), max: formatNumber(textMax) });
  nodes.counter.classList.toggle("counter--near", count > textMax * 0.9 && count <= textMax);
  nodes.counter.classList.toggle("counter--over", count > textMax);
  nodes.text.setAttribute("aria-invalid", count > textMax ? "true" : "false");
}

function validate(theme, text, author) {
  if (!theme) return { field: nodes.theme, message: t("ask.error_theme") };
  if (!text) return { field: nodes.text, message: t("ask.error_empty") };
  if (charCount(text) > textMax) return { field: nodes.text, message: t("ask.error_too_long", { max: textMax }) };
  if (charCount(author) > authorMax) return { field: nodes.author, message: t("ask.error_author_too_long", { max: authorMax }) };
  return null;
}

// A question the server shed (503), or that got no answer, is kept in the form
// and sent again by itself (static/js/retry.js); the draft is kept in
// sessionStorage so that a reload meanwhile loses nothing.
const DRAFT_KEY = "tdmce.ask_draft";
/** The retrying() handle while a question is being sent; null otherwise. */
let sending = null;
let retryTicker = null;

function readDraft() {
  try {
    const draft = JSON.parse(sessionStorage.getItem(DRAFT_KEY) || "null");
    return draft && typeof draft.text === "string" ? draft : null;
  } catch {
    return null;
  }
}

function writeDraft(draft) {
  try {
    if (draft) sessionStorage.setItem(DRAFT_KEY, JSON.stringify(draft));
    else sessionStorage.removeItem(DRAFT_KEY);
  } catch {
    /* storage may be disabled: only a reload would lose the text */
  }
}

/** What is typed, kept as the draft (with what we know of earlier attempts). */
function keepTyping() {
  const { sending: wasSending, maybeStored, attempted } = readDraft() || {};
  const text = nodes.text.value;
  if (!text.trim() && !maybeStored) return writeDraft(null);
  writeDraft({ theme: nodes.theme.value, text, author: nodes.author.value, sending: Boolean(wasSending && sending), maybeStored, attempted });
}

/** The server's form of a question text (qa/model.py clean_text), to recognise it. */
function normalText(text) {
  return String(text || "").replace(/\r\n?/g, "\n").normalize("NFC").trim().replace(/\n{3,}/g, "\n\n");
}

function lockForm(locked) {
  nodes.text.readOnly = locked;
  nodes.author.readOnly = locked;
  nodes.theme.disabled = locked;
  nodes.submit.disabled = locked;
  if (locked) nodes.submit.setAttribute("aria-busy", "true");
  else nodes.submit.removeAttribute("aria-busy");
  nodes.submit.textContent = locked ? t("ask.sending") : t("ask.submit");
}

/** The retry notice: `state` for tests and styles, `text`, and which buttons show. */
function showRetry(state, text = "", { cancel = false, again = false } = {}) {
  clearInterval(retryTicker);
  retryTicker = null;
  nodes.retry.dataset.state = state;
  nodes.retry.hidden = !state;
  nodes.retryText.textContent = text;
  nodes.retryCancel.hidden = !cancel;
  nodes.retryAgain.hidden = !again;
}

function announce(text) {
  nodes.askAnnounce.textContent = text;
}

/** "Sent again in 4 s…", counted down until the next attempt at `at`. */
function showWaiting(at, error) {
  const key = isAmbiguous(error) ? "ask.retry_no_answer" : "ask.retry_busy";
  const render = () => {
    const seconds = Math.max(0, Math.ceil((at - Date.now()) / 1000));
    nodes.retryText.textContent = t(key, { seconds: formatNumber(seconds) });
  };
  const announced = nodes.retry.dataset.announced;
  showRetry("waiting", "", { cancel: true });
  nodes.retry.dataset.announced = key;
  render();
  retryTicker = setInterval(render, 250);
  // Said once per kind of trouble, not at every attempt.
  if (announced !== key) announce(t(`${key}_announce`));
}

/**
 * A question we sent without getting an answer may have been stored: it is
 * among "my questions" with the same theme and text, is not one of those
 * that were there before, and is not older than that first attempt (with
 * room for the clocks' difference).
 */
async function findStored(maybe) {
  const list = await fetchJSON("/api/questions/mine", { timeoutMs: retrySettings.timeoutMs });
  const since = maybe.since - 10 * 60_000;
  return (list || []).find((q) =>
    q.theme === maybe.theme && normalText(q.text) === maybe.text && !maybe.known.includes(q.id) &&
    !(Date.parse(q.created_at) < since)) || null;
}

async function postQuestion(body, draft, failures) {
  if (failures > 0) showRetry("sending", t("ask.retry_now"), { cancel: true });
  if (draft.maybeStored) {
    const found = await findStored(draft.maybeStored);
    if (found) return found;
  }
  const startedAt = Date.now();
  try {
    return await fetchJSON("/api/questions", { method: "POST", json: body, timeoutMs: retrySettings.timeoutMs });
  } catch (error) {
    if (isAmbiguous(error) && !draft.maybeStored) {
      const text = normalText(body.text);
      const known = [...myQuestions.values()].filter((q) => q.theme === body.theme && normalText(q.text) === text).map((q) => q.id);
      draft.maybeStored = { theme: body.theme, text, since: startedAt, known };
      writeDraft(draft);
    }
    throw error;
  }
}

function questionSent(question, author) {
  if (question && question.id !== undefined) upsertMine(question);
  nodes.text.value = "";
  updateCounter();
  writeDraft(null);
  try {
    if (author) localStorage.setItem(AUTHOR_STORAGE_KEY, author);
    else localStorage.removeItem(AUTHOR_STORAGE_KEY);
  } catch {
    /* not essential */
  }
  showRetry("");
  showStatus(nodes.askStatus, t("ask.sent"), "success");
}

/** Send `body` (theme, text, author?), again and again while the server is too busy. */
async function sendQuestion(body) {
  const before = readDraft() || {};
  // What may have arrived earlier was another question if the text changed since.
  const same = before.maybeStored?.theme === body.theme && before.maybeStored?.text === normalText(body.text);
  const draft = { ...before, maybeStored: same ? before.maybeStored : null, theme: body.theme, text: nodes.text.value, author: nodes.author.value, sending: true, attempted: true };
  writeDraft(draft);
  lockForm(true);
  showStatus(nodes.askStatus, "");
  showRetry("");
  delete nodes.retry.dataset.announced;
  sending = retrying((failures) => postQuestion(body, draft, failures), { onWait: ({ at, error }) => showWaiting(at, error) });
  const result = await sending.promise;
  sending = null;
  lockForm(false);
  if (result.outcome === "done") {
    questionSent(result.value, body.author);
    return;
  }
  writeDraft({ ...draft, sending: false });
  const error = result.error;
  if (result.outcome === "stopped") {
    showRetry("cancelled", t("ask.retry_cancelled"));
    announce(t("ask.retry_cancelled"));
  } else if (result.outcome === "gave_up") {
    showRetry("gave-up", t("ask.retry_gave_up"), { again: true });
    announce(t("ask.retry_gave_up"));
  } else {
    showRetry("");
    showStatus(nodes.askStatus, error.message, "error");
    if (error.status === 429) {
      const label = t("ask.submit");
      disableFor(nodes.submit, error.retryAfter ?? 60, (left) => {
        nodes.submit.textContent = left > 0 ? t("ask.retry_in", { seconds: left }) : label;
      });
    }
  }
}

/** The form as it stands, validated; null (and the problem shown) when it cannot be sent. */
function formBody() {
  const theme = nodes.theme.value;
  const text = nodes.text.value.trim();
  const author = nodes.author.value.trim();
  const problem = validate(theme, text, author);
  if (problem) {
    showStatus(nodes.askStatus, problem.message, "error");
    problem.field.focus();
    return null;
  }
  const body = { theme, text };
  if (author) body.author = author;
  return body;
}

function submitQuestion(event) {
  event?.preventDefault();
  // One question at a time: no second request while one is being sent or awaited.
  if (sending || nodes.submit.disabled) return;
  const body = formBody();
  if (body) sendQuestion(body);
}

nodes.text.addEventListener("input", () => {
  updateCounter();
  keepTyping();
});
nodes.author.addEventListener("input", keepTyping);
nodes.theme.addEventListener("change", keepTyping);
nodes.form.addEventListener("submit", submitQuestion);
nodes.retryCancel.addEventListener("click", () => {
  sending?.stop();
  nodes.text.focus();
});
nodes.retryAgain.addEventListener("click", () => submitQuestion());
updateCounter();

/** After a reload: the text back in the form, and sent again if it was being sent. */
function restoreDraft() {
  const draft = readDraft();
  if (!draft || nodes.text.value) return;
  if (draft.theme && [...nodes.theme.options].some((o) => o.value === draft.theme)) {
    nodes.theme.value = draft.theme;
    themeTouched = true;
  }
  nodes.text.value = draft.text;
  if (typeof draft.author === "string") nodes.author.value = draft.author.slice(0, authorMax);
  updateCounter();
  if (!draft.attempted) return;
  if (draft.sending) {
    const body = formBody();
    if (body) sendQuestion(body);
  } else {
    showStatus(nodes.askStatus, t("ask.draft_restored"), "info");
  }
}

// ---------------------------------------------------------------- my questions

function statusBadge(question) {
  const status = question.status || "pending";
  return el("span", { class: `status status--${status}`, dataset: { status }, text: t(`status.${status}`) });
}

function renderMine() {
  const items = [...myQuestions.values()].sort((a, b) => (b.created_at || "").localeCompare(a.created_at || "") || b.id - a.id);
  nodes.mine.replaceChildren(
    ...items.map((q) =>
      el(
        "li",
        { class: "question", dataset: { questionId: q.id } },
        el(
          "div",
          { class: "question__meta" },
          statusBadge(q),
          q.id === onAirId ? el("span", { class: "badge badge--live", text: t("status.on_air") }) : null,
          el("span", { class: "theme-chip", title: themeTitle(q.theme), text: themeShort(q.theme) }),
          ageElement(q.created_at),
        ),
        el("p", { class: "question__text", text: q.text }),
        q.merged_into ? el("p", { class: "hint", text: t("mine.merged") }) : null,
      ),
    ),
  );
  nodes.mineEmpty.hidden = items.length > 0;
}

function upsertMine(question) {
  const known = myQuestions.get(question.id);
  if (known && (known.version ?? 0) > (question.version ?? 0)) return;
  myQuestions.set(question.id, { ...known, ...question });
  renderMine();
}

async function loadMine() {
  try {
    const list = await fetchJSON("/api/questions/mine");
    // Merged by version, not replaced: a list read before a question we just
    // sent was stored must not hide it (a viewer's questions never go away).
    for (const q of list || []) {
      const known = myQuestions.get(q.id);
      if (!known || (known.version ?? 0) <= (q.version ?? 0)) myQuestions.set(q.id, { ...known, ...q });
    }
    renderMine();
  } catch {
    renderMine();
  }
}

// ---------------------------------------------------------------- public questions

function sortPublic(a, b) {
  if (sortOrder === "popular") {
    const byVotes = (b.votes || 0) - (a.votes || 0);
    if (byVotes) return byVotes;
  }
  return (b.created_at || "").localeCompare(a.created_at || "") || b.id - a.id;
}

/** Votes sent and not yet answered (question id -> method), retried quietly. */
const pendingVotes = new Map();

function voteButton(q) {
  const pending = pendingVotes.has(q.id);
  return el(
    "button",
    {
      type: "button",
      class: ["vote-button", pending && "vote-button--pending"],
      "aria-pressed": q.voted ? "true" : "false",
      "aria-describedby": `votes-${q.id}`,
      // aria-disabled, not disabled: a keyboard user's focus stays on it.
      "aria-disabled": pending ? "true" : null,
      "aria-busy": pending ? "true" : null,
      title: pending ? t("vote.pending") : null,
      dataset: pending ? { action: "vote", pending: pendingVotes.get(q.id) } : { action: "vote" },
    },
    el("span", { class: "vote-button__icon", "aria-hidden": "true", text: pending ? "…" : q.voted ? "✓" : "▲" }),
    " ",
    t("vote.button"),
    pending ? el("span", { class: "visually-hidden", text: ` (${t("vote.pending")})` }) : null,
  );
}

function publicItem(q) {
  return el(
    "li",
    { class: ["question", q.id === onAirId && "question--on-air"], dataset: { questionId: q.id, theme: q.theme } },
    el(
      "div",
      { class: "question__body" },
      el(
        "div",
        { class: "question__meta" },
        el("span", { class: "theme-chip", title: themeTitle(q.theme), text: themeShort(q.theme) }),
        q.id === onAirId ? el("span", { class: "badge badge--live", text: t("status.on_air") }) : null,
        q.status === "answered" ? el("span", { class: "status status--answered", dataset: { status: "answered" }, text: t("status.answered") }) : null,
      ),
      el("p", { class: "question__text", text: q.text }),
      el(
        "p",
        { class: "question__byline" },
        q.author ? el("span", { class: "author", text: q.author }) : el("span", { class: "author author--anonymous", text: t("question.anonymous") }),
        " · ",
        ageElement(q.created_at),
      ),
    ),
    el(
      "div",
      { class: "question__vote" },
      el("span", { class: "votes", id: `votes-${q.id}`, dataset: { votes: q.votes || 0 }, text: tn("vote.count", q.votes || 0) }),
      voteButton(q),
    ),
  );
}

function renderPublic() {
  const items = [...publicQuestions.values()]
    .filter((q) => !themeFilter || q.theme === themeFilter)
    .sort(sortPublic);
  // Keep focus on a vote button across re-renders (keyboard users).
  const focusedId = document.activeElement?.closest?.("#public-questions [data-question-id]")?.dataset.questionId;
  nodes.public.replaceChildren(...items.map(publicItem));
  nodes.publicEmpty.hidden = items.length > 0;
  if (focusedId) nodes.public.querySelector(`[data-question-id="${CSS.escape(focusedId)}"] .vote-button`)?.focus();
}

function upsertPublic(question) {
  if (question.merged_into || !PUBLIC_STATUSES.has(question.status)) {
    if (publicQuestions.delete(question.id)) renderPublic();
    return;
  }
  const known = publicQuestions.get(question.id);
  if (known && (known.version ?? 0) > (question.version ?? 0)) return;
  // Socket pushes carry no `voted`: keep the one we know for this viewer.
  const voted = "voted" in question ? question.voted : Boolean(known?.voted);
  publicQuestions.set(question.id, { ...known, ...question, voted });
  renderPublic();
}

async function loadPublic() {
  try {
    const list = await fetchJSON("/api/questions?sort=popular");
    publicQuestions.clear();
    for (const q of list || []) {
      if (PUBLIC_STATUSES.has(q.status) && !q.merged_into) publicQuestions.set(q.id, { ...q, voted: Boolean(q.voted) });
    }
    showStatus(nodes.publicStatus, "");
  } catch (error) {
    showStatus(nodes.publicStatus, error.message, "error");
  }
  renderPublic();
}

/**
 * Vote or withdraw. Shed (503) or unanswered, it is sent again quietly for a
 * little while (a vote sent twice counts once), the button showing it is
 * pending; the count shown is always the server's, never a guess.
 */
async function toggleVote(id) {
  const q = publicQuestions.get(id);
  if (!q || pendingVotes.has(id)) return;
  const method = q.voted ? "DELETE" : "POST";
  pendingVotes.set(id, method);
  renderPublic();
  const url = `/api/questions/${encodeURIComponent(id)}/vote`;
  const { promise } = retrying(
    () => fetchJSON(url, { method, json: method === "POST" ? {} : undefined, timeoutMs: retrySettings.timeoutMs }),
    { giveUpMs: retrySettings.voteGiveUpMs, maxAttempts: retrySettings.voteAttempts },
  );
  const result = await promise;
  pendingVotes.delete(id);
  const current = publicQuestions.get(id);
  if (result.outcome === "done") {
    if (current) {
      current.votes = result.value?.votes ?? current.votes;
      current.voted = typeof result.value?.voted === "boolean" ? result.value.voted : method === "POST";
    }
    showStatus(nodes.publicStatus, "");
  } else {
    const error = result.error;
    showStatus(nodes.publicStatus, result.outcome === "gave_up" ? t("vote.gave_up") : error.message, "error");
    if (error.status === 404) publicQuestions.delete(id);
  }
  renderPublic();
}

nodes.public.addEventListener("click", (event) => {
  const button = event.target.closest(".vote-button");
  if (!button) return;
  const id = Number(button.closest("[data-question-id]").dataset.questionId);
  toggleVote(id);
});

nodes.publicTheme.addEventListener("change", () => {
  themeFilter = nodes.publicTheme.value;
  renderPublic();
});

for (const button of document.querySelectorAll("[data-sort]")) {
  button.addEventListener("click", () => {
    sortOrder = button.dataset.sort;
    for (const other of document.querySelectorAll("[data-sort]")) {
      other.setAttribute("aria-pressed", String(other === button));
    }
    renderPublic();
  });
}

// ---------------------------------------------------------------- on air & programme

function showOnAir(question) {
  onAirId = question ? question.id : null;
  if (question && PUBLIC_STATUSES.has(question.status)) upsertPublic({ ...question, on_air: true });
  nodes.onAir.hidden = !question;
  $("on-air-question-text").textContent = question ? question.text : "";
  $("on-air-question-meta").textContent = question
    ? [question.author, themeShort(question.theme)].filter(Boolean).join(" · ")
    : "";
  renderPublic();
  renderMine();
}

// The theme of the segment on air is suggested in the ask form until the viewer
// picks one: `suggestedTheme` is the one we set, so the next segment's replaces it.
let themeTouched = false;
let suggestedTheme = null;
nodes.theme.addEventListener("change", () => {
  themeTouched = true;
});

function suggestTheme(theme) {
  if (themeTouched || !theme) return;
  if (nodes.theme.value && nodes.theme.value !== suggestedTheme) return;
  nodes.theme.value = theme;
  suggestedTheme = theme;
}

const clock = new ProgrammeClock();
/** The last `programme` payload (page_config's until the socket speaks). */
let programme = null;
let announced;

function label(text) {
  return el("span", { class: "programme-now__label", text });
}

function titleNode(segment, role) {
  return el("strong", { class: "programme-now__title", dataset: { role }, text: segmentTitle(segment) });
}

function themeNode(segment) {
  return segment?.theme ? el("span", { class: "programme-now__theme", title: themeTitle(segment.theme), text: ` — ${themeShort(segment.theme)}` }) : null;
}

/** The box's structure; the countdowns in it are filled by tickProgramme(). */
function buildProgramme() {
  const state = programme.state;
  const now = findSegment(programme, programme.on_air);
  const next = findSegment(programme, programme.next);
  const rows = [];
  if (state === "before") {
    rows.push(el("p", { class: "programme-now__line programme-now__line--lead" },
      el("span", { dataset: { role: "lead" }, text: t("now.starts_in") }), " ",
      el("strong", { class: "programme-now__count", dataset: { role: "countdown" } })));
    if (next) rows.push(el("p", { class: "programme-now__line" }, label(t("now.first")), " ", titleNode(next, "next-title"), themeNode(next)));
  } else if (state === "live" || state === "hold") {
    if (state === "hold") rows.push(el("p", { class: "programme-now__line programme-now__line--hold", text: t("now.hold") }));
    if (now) {
      rows.push(el("p", { class: "programme-now__line" },
        label(t("now.on_air")), " ", titleNode(now, "on-air-title"), themeNode(now),
        state === "live" ? el("span", { class: "programme-now__time" }, " · ", el("span", { dataset: { role: "countdown" } })) : null));
    }
    if (next) {
      rows.push(el("p", { class: "programme-now__line" },
        label(t("now.next")), " ", titleNode(next, "next-title"),
        el("span", { class: "programme-now__time" }, " · ", el("span", { dataset: { role: "next-countdown" } }),
          ` (${formatTime(next.expected_start)})`)));
    }
  } else if (state === "ended") {
    rows.push(el("p", { class: "programme-now__line programme-now__line--lead", dataset: { role: "ended" }, text: t("now.ended") }));
  }
  rows.push(el("p", { class: "programme-now__more" }, el("a", { href: "/programme", text: t("now.full_programme") })));
  nodes.programme.replaceChildren(...rows);
  nodes.programme.hidden = false;
  nodes.programme.dataset.state = state || "";
  tickProgramme();

  // Screen readers hear what changed on air, not every second of the countdown.
  const said = state === "ended" ? t("now.ended") : now ? `${t("now.on_air")} ${segmentTitle(now)}` : "";
  if (announced !== undefined && said !== announced && said) $("programme-announce").textContent = said;
  announced = said;
  suggestTheme(state === "live" || state === "hold" ? now?.theme : null);
  updateSlate();
}

function setText(node, text) {
  if (node && node.textContent !== text) node.textContent = text;
}

function tickProgramme() {
  if (!programme) return;
  const box = nodes.programme;
  if (programme.state === "before") {
    const first = findSegment(programme, programme.next) || programme.segments[0];
    const left = clock.secondsUntil(first?.expected_start || programme.event?.planned_start);
    setText(box.querySelector('[data-role="lead"]'), left > 0 ? t("now.starts_in") : t("now.starting"));
    setText(box.querySelector('[data-role="countdown"]'), left > 0 ? formatCountdown(left) : "");
    return;
  }
  const end = onAirEnds(programme);
  const left = end === null ? null : clock.secondsUntil(end);
  setText(box.querySelector('[data-role="countdown"]'), left === null ? "" : t("now.time_left", { time: formatCountdown(left) }));
  const next = findSegment(programme, programme.next);
  const toNext = next && clock.secondsUntil(next.expected_start);
  setText(box.querySelector('[data-role="next-countdown"]'), toNext > 0 ? t("now.in", { time: formatCountdown(toNext) }) : t("now.soon"));
}

/** Before the show, the player's slate gives the start in the viewer's own time. */
function updateSlate() {
  const when = document.querySelector("#player-slate .slate__when");
  const zone = document.querySelector("#player-slate .slate__tz");
  const start = programme?.event?.planned_start;
  if (!when || !start) return;
  if (programme.state !== "before") {
    // Until the picture plays, the slate says what is on air.
    const onAir = findSegment(programme, programme.on_air);
    when.textContent = programme.state === "ended" ? t("now.ended") : segmentTitle(onAir);
    if (zone) zone.hidden = true;
    return;
  }
  const date = new Intl.DateTimeFormat(config.lang, { day: "numeric", month: "long", year: "numeric" }).format(new Date(start));
  when.textContent = t("watch.slate_start_local", { date, time: formatTime(start) });
  if (zone) {
    zone.hidden = false;
    const parts = new Intl.DateTimeFormat(config.lang, { timeZoneName: "long" }).formatToParts(new Date(start));
    zone.textContent = parts.find((part) => part.type === "timeZoneName")?.value || zone.textContent;
  }
}

function renderProgramme(body) {
  if (!body || !Array.isArray(body.segments)) return;
  clock.update(body);
  programme = body;
  buildProgramme();
  player.setProgramme(body);
}

if (config.programme) renderProgramme(config.programme);
clock.tick(tickProgramme, 250);

// ---------------------------------------------------------------- realtime

// Vote counts come batched: one `votes` push a second for every question whose
// count moved, rather than a `question` push per question.
const socket = connectSocket("/", nodes.liveStatus, { votes: "batched" });
if (socket) {
  let connectedOnce = false;
  socket.on("connect", () => {
    // Catch up with whatever was pushed while we were away.
    if (connectedOnce) {
      loadPublic();
      loadMine();
    }
    connectedOnce = true;
  });
  socket.on("question", (question) => {
    if (!question || question.id === undefined) return;
    upsertPublic(question);
    if (myQuestions.has(question.id)) upsertMine(question);
  });
  socket.on("votes", ({ questions } = {}) => {
    let changed = false;
    for (const { id, votes } of Array.isArray(questions) ? questions : []) {
      const known = publicQuestions.get(id);
      if (known && typeof votes === "number" && known.votes !== votes) {
        publicQuestions.set(id, { ...known, votes });
        changed = true;
      }
      const mine = myQuestions.get(id);
      if (mine && typeof votes === "number" && mine.votes !== votes) {
        myQuestions.set(id, { ...mine, votes });
        renderMine();
      }
    }
    if (changed) renderPublic();
  });
  socket.on("question_removed", ({ id } = {}) => {
    if (publicQuestions.delete(id)) renderPublic();
  });
  socket.on("my_question", (question) => {
    if (question && question.id !== undefined) upsertMine(question);
  });
  socket.on("on_air", (question) => showOnAir(question || null));
  socket.on("programme", renderProgramme);
  // The server lost pushes between its processes (Redis away): fetch again
  // what we show, which may lack what was pushed meanwhile.
  // Every viewer hears "resync" at the same moment: spread the refetches
  // over a few seconds so that a whole audience does not ask at once.
  socket.on("resync", () => {
    window.setTimeout(() => {
      loadPublic().then(loadOnAir);
      loadMine();
      loadProgramme();
    }, Math.random() * 5000);
  });
}

async function loadProgramme() {
  try {
    renderProgramme(await fetchJSON("/api/programme"));
  } catch {
    /* not essential: the next programme push will tell us */
  }
}

async function loadOnAir() {
  try {
    const question = await fetchJSON("/api/on-air");
    showOnAir(question && question.id !== undefined ? question : null);
  } catch {
    /* not essential: the on_air event will tell us */
  }
}

setInterval(() => refreshRelativeTimes(), 30_000);
restoreDraft();
loadMine();
loadPublic().then(loadOnAir);

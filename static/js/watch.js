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

async function submitQuestion(event) {
  event.preventDefault();
  if (nodes.submit.disabled) return;
  const theme = nodes.theme.value;
  const text = nodes.text.value.trim();
  const author = nodes.author.value.trim();
  const problem = validate(theme, text, author);
  if (problem) {
    showStatus(nodes.askStatus, problem.message, "error");
    problem.field.focus();
    return;
  }
  const body = { theme, text };
  if (author) body.author = author;

  nodes.submit.disabled = true;
  nodes.submit.setAttribute("aria-busy", "true");
  showStatus(nodes.askStatus, "");
  let retryAfter = null;
  try {
    const question = await fetchJSON("/api/questions", { method: "POST", json: body });
    if (question && question.id !== undefined) upsertMine(question);
    nodes.text.value = "";
    updateCounter();
    try {
      if (author) localStorage.setItem(AUTHOR_STORAGE_KEY, author);
      else localStorage.removeItem(AUTHOR_STORAGE_KEY);
    } catch {
      /* not essential */
    }
    showStatus(nodes.askStatus, t("ask.sent"), "success");
  } catch (error) {
    showStatus(nodes.askStatus, error.message, "error");
    if (error.status === 429) retryAfter = error.retryAfter ?? 60;
  } finally {
    nodes.submit.removeAttribute("aria-busy");
    nodes.submit.disabled = false;
  }
  if (retryAfter !== null) {
    const label = t("ask.submit");
    disableFor(nodes.submit, retryAfter, (left) => {
      nodes.submit.textContent = left > 0 ? t("ask.retry_in", { seconds: left }) : label;
    });
  }
}

nodes.text.addEventListener("input", updateCounter);
nodes.form.addEventListener("submit", submitQuestion);
updateCounter();

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
    myQuestions.clear();
    for (const q of list || []) myQuestions.set(q.id, q);
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

function voteButton(q) {
  return el(
    "button",
    {
      type: "button",
      class: "vote-button",
      "aria-pressed": q.voted ? "true" : "false",
      "aria-describedby": `votes-${q.id}`,
      dataset: { action: "vote" },
    },
    el("span", { class: "vote-button__icon", "aria-hidden": "true", text: q.voted ? "✓" : "▲" }),
    " ",
    t("vote.button"),
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

async function toggleVote(id, button) {
  const q = publicQuestions.get(id);
  if (!q) return;
  const method = q.voted ? "DELETE" : "POST";
  button.disabled = true;
  try {
    const result = await fetchJSON(`/api/questions/${encodeURIComponent(id)}/vote`, {
      method,
      json: method === "POST" ? {} : undefined,
    });
    const current = publicQuestions.get(id);
    if (current) {
      current.votes = result?.votes ?? current.votes;
      current.voted = typeof result?.voted === "boolean" ? result.voted : method === "POST";
    }
    showStatus(nodes.publicStatus, "");
  } catch (error) {
    showStatus(nodes.publicStatus, error.message, "error");
    if (error.status === 404) publicQuestions.delete(id);
  }
  renderPublic();
}

nodes.public.addEventListener("click", (event) => {
  const button = event.target.closest(".vote-button");
  if (!button) return;
  const id = Number(button.closest("[data-question-id]").dataset.questionId);
  toggleVote(id, button);
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
loadMine();
loadPublic().then(loadOnAir);

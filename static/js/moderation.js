// Moderator console (/moderation).
//
// One id-keyed Map of questions is the single source of truth: HTTP answers and
// Socket.IO pushes go into it (newest `version` wins) and the columns are
// re-rendered from it. Cards are rebuilt only when what they show changed, so
// focus, drafts of inline editors and scroll positions survive live updates.
import {
  ageElement,
  config,
  connectSocket,
  el,
  fetchJSON,
  formatCountdown,
  formatDuration,
  formatNumber,
  formatTime,
  onAirEnds,
  onSessionEnded,
  ProgrammeClock,
  refreshRelativeTimes,
  segmentTitle,
  showStatus,
  t,
  themeShort,
  themeTitle,
  tn,
} from "./common.js";

// ---------------------------------------------------------------- state

/** @type {Map<number, object>} every known question that is not merged away */
const questions = new Map();
let onAirId = null;
/** The last `programme` payload (page_config's until the socket speaks). */
let programme = null;
const programmeClock = new ProgrammeClock();
let selectedId = null;
/**
 * Open inline editors: id → {kind: "text"|"note"|"merge", draft, conflict, version}.
 * `version` is the one the draft was based on: saving sends it, so an edit made
 * meanwhile by someone else is answered 409 instead of being overwritten unseen.
 */
const editors = new Map();
/** Ids with a request in flight: further actions on them wait. */
const busy = new Set();
/** Ids that just arrived live, highlighted for a few seconds. */
const fresh = new Set();
const filters = { theme: "", search: "" };
/** Ids pushed by the socket while a full reload was in flight (kept by the reload). */
let pushedDuringLoad = null;
let initialLoadDone = false;

const $ = (id) => document.getElementById(id);
const consoleNode = $("console");
const lists = {
  pending: $("pending-list"),
  queue: $("queue-list"),
  approved: $("approved-list"),
  answered: $("answered-list"),
  rejected: $("rejected-list"),
};
const onAirSlot = $("on-air");
const noticeNode = $("console-notice");
const alertNode = $("console-alert");
const searchInput = $("search");
const themeSelect = $("filter-theme");
const helpDialog = $("shortcuts-help");
const baseTitle = document.title;
const cardCache = new Map(); // id → {node, signature}
/** Rank shown on each card of #queue-list: 1..n over the whole queue, filters aside. */
let queueRanks = new Map();

// ---------------------------------------------------------------- helpers

const byCreated = (a, b) => (a.created_at || "").localeCompare(b.created_at || "") || a.id - b.id;
const byUpdatedDesc = (a, b) => (b.updated_at || "").localeCompare(a.updated_at || "") || b.id - a.id;
const byQueue = (a, b) => (a.queue_position ?? Infinity) - (b.queue_position ?? Infinity) || byCreated(a, b);
const byVotes = (a, b) => (b.votes || 0) - (a.votes || 0) || byCreated(a, b);

function inQueue(q) {
  return q.starred && q.status === "approved";
}

/** Where a question is shown: one of the `lists` keys, or "on-air". */
function placeOf(q) {
  if (q.id === onAirId) return "on-air";
  if (q.status === "pending") return "pending";
  if (q.status === "approved") return q.starred ? "queue" : "approved";
  if (q.status === "answered") return "answered";
  if (q.status === "rejected") return "rejected";
  return "pending";
}

function normalize(text) {
  return (text || "").normalize("NFD").replace(/\p{Diacritic}/gu, "").toLowerCase();
}

function matchesFilters(q) {
  if (filters.theme && q.theme !== filters.theme) return false;
  if (!filters.search) return true;
  const needle = normalize(filters.search.trim()).replace(/^#/, "");
  if (!needle) return true;
  if (String(q.id) === needle) return true;
  return [q.text, q.author, q.note].some((field) => normalize(field).includes(needle));
}

/** Ids of likely duplicates, from `duplicate_of` and `duplicate:N` flags. */
function duplicateTargets(q) {
  const targets = new Set();
  if (Number.isInteger(q.duplicate_of)) targets.add(q.duplicate_of);
  for (const flag of q.flags || []) {
    const match = /^duplicate:(\d+)$/.exec(flag);
    if (match) targets.add(Number(match[1]));
  }
  targets.delete(q.id);
  return [...targets];
}

function segments() {
  return Array.isArray(programme?.segments) ? programme.segments : [];
}

function onAirSegment() {
  if (!programme || programme.state === "ended") return null;
  return segments().find((s) => s.id === programme.on_air) || null;
}

/** Whether `q` is about the theme of the segment on air. */
function themeIsLive(q) {
  const live = onAirSegment();
  return Boolean(live?.theme) && live.theme === q.theme;
}

function notice(text, kind = "info") {
  const node = kind === "error" ? alertNode : noticeNode;
  showStatus(node, text, kind);
  clearTimeout(node._timer);
  node._timer = setTimeout(() => showStatus(node, ""), kind === "error" ? 10000 : 6000);
}

// ---------------------------------------------------------------- API

function goToLogin() {
  const next = window.location.pathname + window.location.search;
  window.location.assign(`/login?next=${encodeURIComponent(next)}`);
}

/** fetchJSON with the CSRF header; a 401 sends the moderator to /login. */
async function api(url, options = {}) {
  try {
    return await fetchJSON(url, { csrf: options.method && options.method !== "GET", ...options });
  } catch (error) {
    if (error.status === 401) goToLogin();
    throw error;
  }
}

function reportError(error) {
  if (error.status === 401) return; // already on the way to /login
  notice(error.message || t("error.generic"), "error");
}

// ---------------------------------------------------------------- the Map

/** Insert or replace a question unless we already hold a newer version. */
function upsert(q) {
  if (!q || q.id === undefined || q.id === null) return false;
  if (q.merged_into !== null && q.merged_into !== undefined) {
    removeQuestion(q.id);
    return true;
  }
  const known = questions.get(q.id);
  if (known && (q.version ?? 0) < (known.version ?? 0)) return false;
  questions.set(q.id, q);
  if (q.on_air === true) onAirId = q.id;
  else if (q.on_air === false && onAirId === q.id) onAirId = null;
  pushedDuringLoad?.add(q.id);
  scheduleRender();
  return true;
}

function removeQuestion(id) {
  if (selectedId === id) select(neighbourOf(id));
  questions.delete(id);
  editors.delete(id);
  fresh.delete(id);
  if (onAirId === id) onAirId = null;
  scheduleRender();
}

function setOnAir(q) {
  const previous = onAirId;
  if (q && q.id !== undefined) {
    upsert(q);
    onAirId = q.id;
  } else {
    onAirId = null;
  }
  // Keep the local copies consistent until their own pushes arrive.
  for (const other of questions.values()) {
    if (other.id !== onAirId && other.on_air) questions.set(other.id, { ...other, on_air: false });
  }
  if (previous !== onAirId) scheduleRender();
}

async function loadQuestions() {
  pushedDuringLoad = new Set();
  try {
    const list = await api("/api/questions");
    const listed = new Set();
    for (const q of list || []) {
      listed.add(q.id);
      upsert(q);
    }
    for (const id of [...questions.keys()]) {
      if (!listed.has(id) && !pushedDuringLoad.has(id)) removeQuestion(id);
    }
    initialLoadDone = true;
  } catch (error) {
    reportError(error);
  } finally {
    pushedDuringLoad = null;
    scheduleRender();
  }
}

async function loadOnAir() {
  try {
    setOnAir(await api("/api/on-air"));
  } catch (error) {
    if (error.status !== 404) reportError(error);
  }
}

function setProgramme(body) {
  if (!body || !Array.isArray(body.segments)) return; // keep the running order we have
  programmeClock.update(body);
  programme = body;
  renderProgrammeBanner();
  scheduleRender();
}

// ---------------------------------------------------------------- actions

async function patch(id, changes, version) {
  const q = questions.get(id);
  if (!q || busy.has(id)) return null;
  busy.add(id);
  scheduleRender();
  try {
    const updated = await api(`/api/questions/${encodeURIComponent(id)}`, {
      method: "PATCH",
      json: { ...changes, version: version ?? q.version },
    });
    upsert(updated);
    return updated;
  } catch (error) {
    if (error.status === 409 && error.body?.current) {
      // Someone else changed it: show theirs, do not retry blindly.
      const current = error.body.current;
      questions.delete(id);
      upsert(current);
      const editor = editors.get(id);
      if (editor) {
        // Shown now: the next save is a deliberate choice over the current version.
        editor.conflict = true;
        editor.version = current.version;
      }
      flashCard(id, "qcard--conflict");
      notice(t("console.stale_version"), "error");
    } else {
      reportError(error);
      if (changes.queue_position !== undefined) loadQuestions(); // undo the optimistic order
    }
    return null;
  } finally {
    busy.delete(id);
    scheduleRender();
  }
}

/** Pick the card after `id` in its list (or before it, at the end) for the selection. */
function neighbourOf(id) {
  const cards = visibleCards();
  const index = cards.findIndex((node) => Number(node.dataset.questionId) === id);
  if (index < 0) return null;
  const list = cards[index].parentElement;
  const sameList = cards.filter((node) => node.parentElement === list);
  const at = sameList.indexOf(cards[index]);
  const next = sameList[at + 1] || sameList[at - 1];
  return next ? Number(next.dataset.questionId) : null;
}

/** Run `work` for a triage action that moves `id` out of its list; then select the next card. */
async function triage(id, work) {
  const focusWasInside = document.activeElement?.closest?.(`[data-question-id="${id}"]`) || document.activeElement === document.body;
  const next = neighbourOf(id);
  const placeBefore = questions.has(id) ? placeOf(questions.get(id)) : null;
  const result = await work();
  const q = questions.get(id);
  if (result && selectedId === id && (!q || placeOf(q) !== placeBefore) && next !== null) {
    select(next, { focus: Boolean(focusWasInside) });
  }
  return result;
}

const actions = {
  approve: (id) => triage(id, () => patch(id, { status: "approved" })),
  reject: (id) => triage(id, () => patch(id, { status: "rejected" })),
  answered: (id) => triage(id, () => patch(id, { status: "answered" })),
  star(id) {
    const q = questions.get(id);
    if (!q) return null;
    if (q.starred) return patch(id, { starred: false });
    // Starring is choosing it for the air: a pending question is approved with it.
    const changes = q.status === "pending" ? { starred: true, status: "approved" } : { starred: true };
    return triage(id, () => patch(id, changes));
  },
  edit(id) {
    const q = questions.get(id);
    if (!q) return;
    editors.set(id, { kind: "text", draft: q.text, conflict: false, version: q.version });
    select(id);
    renderNow();
    focusEditor(id);
  },
  note(id) {
    const q = questions.get(id);
    if (!q) return;
    editors.set(id, { kind: "note", draft: q.note || "", conflict: false, version: q.version });
    select(id);
    renderNow();
    focusEditor(id);
  },
  merge(id, button) {
    const into = Number(button?.dataset.into);
    if (Number.isInteger(into) && into > 0) return mergeInto(id, into);
    return actions["merge-open"](id);
  },
  "merge-open"(id) {
    const target = duplicateTargets(questions.get(id) || {})[0];
    editors.set(id, { kind: "merge", draft: target ? String(target) : "", conflict: false });
    select(id);
    renderNow();
    focusEditor(id);
  },
  "cancel-edit": (id) => closeEditor(id),
  "save-edit": (id) => saveEditor(id),
  "on-air": (id) => putOnAir(id),
  "off-air": () => takeOffAir(),
  "move-up": (id) => moveByKeyboard(id, -1),
  "move-down": (id) => moveByKeyboard(id, +1),
};

function closeEditor(id) {
  editors.delete(id);
  renderNow();
  cardNode(id)?.focus();
}

async function saveEditor(id) {
  const editor = editors.get(id);
  if (!editor) return;
  const draft = editor.draft.trim();
  if (editor.kind === "merge") {
    const into = Number(draft.replace(/^#/, ""));
    if (!Number.isInteger(into) || into <= 0 || into === id) {
      notice(t("console.merge_invalid"), "error");
      focusEditor(id);
      return;
    }
    await mergeInto(id, into);
    return;
  }
  if (editor.kind === "text" && !draft) {
    notice(t("console.text_empty"), "error");
    focusEditor(id);
    return;
  }
  const changes = editor.kind === "text" ? { text: draft } : { note: draft || null };
  editor.conflict = false;
  const updated = await patch(id, changes, editor.version);
  if (updated) {
    editors.delete(id);
    renderNow();
    cardNode(id)?.focus();
    notice(editor.kind === "text" ? t("console.text_saved") : t("console.note_saved"));
  }
}

async function mergeInto(id, into) {
  if (busy.has(id)) return;
  busy.add(id);
  scheduleRender();
  const focusWasInside = Boolean(document.activeElement?.closest?.(`[data-question-id="${id}"]`));
  try {
    const target = await api(`/api/questions/${encodeURIComponent(id)}/merge`, { method: "POST", json: { into } });
    removeQuestion(id);
    upsert(target);
    if (focusWasInside && selectedId !== null) select(selectedId, { focus: true });
    notice(t("console.merged", { id, into }));
  } catch (error) {
    reportError(error);
  } finally {
    busy.delete(id);
    scheduleRender();
  }
}

async function putOnAir(id) {
  let q = questions.get(id);
  if (!q || busy.has(id)) return;
  if (q.status === "pending") {
    q = await patch(id, { status: "approved" });
    if (!q) return;
  }
  busy.add(id);
  scheduleRender();
  try {
    const result = await api("/api/on-air", { method: "PUT", json: { question_id: id } });
    setOnAir(result && result.id !== undefined ? result : { ...questions.get(id), on_air: true });
    notice(t("console.now_on_air", { id }));
  } catch (error) {
    reportError(error);
  } finally {
    busy.delete(id);
    scheduleRender();
  }
}

async function takeOffAir() {
  if (onAirId === null) return;
  try {
    await api("/api/on-air", { method: "DELETE" });
    setOnAir(null);
    notice(t("console.off_air_done"));
  } catch (error) {
    reportError(error);
  }
}

// ---------------------------------------------------------------- queue order

/**
 * The queue as the server numbers it: every question holding a queue_position,
 * including the ones not shown in #queue-list (filtered out, on air, answered).
 */
function queueOrder() {
  return [...questions.values()]
    .filter((q) => q.queue_position !== null && q.queue_position !== undefined)
    .sort(byQueue)
    .map((q) => q.id);
}

/** Move `id` just before (or after) `targetId` in the queue, and tell the server. */
function moveInQueue(id, targetId, after) {
  const order = queueOrder().filter((other) => other !== id);
  let index = targetId === null ? order.length : order.indexOf(targetId);
  if (index < 0) return;
  if (after && targetId !== null) index += 1;
  order.splice(index, 0, id);
  const position = index + 1;
  const q = questions.get(id);
  if (!q || q.queue_position === position) return;
  // Show the new order now; the server's pushes confirm it.
  order.forEach((other, i) => {
    const item = questions.get(other);
    if (item && other !== id) questions.set(other, { ...item, queue_position: i + 1 });
  });
  patch(id, { queue_position: position }).then((updated) => {
    if (updated) notice(t("console.moved", { id, position }));
  });
  renderNow();
}

function moveByKeyboard(id, delta) {
  const q = questions.get(id);
  if (!q || !inQueue(q)) return;
  const visible = [...lists.queue.querySelectorAll(":scope > [data-question-id]")].map((node) => Number(node.dataset.questionId));
  const at = visible.indexOf(id);
  const neighbour = visible[at + delta];
  if (at < 0 || neighbour === undefined) return;
  moveInQueue(id, neighbour, delta > 0);
  cardNode(id)?.focus();
}

// ---------------------------------------------------------------- cards

const STATUS_ACTIONS = {
  pending: ["approve", "reject", "star", "on-air", "edit", "note", "merge"],
  approved: ["on-air", "star", "answered", "reject", "edit", "note", "merge"],
  rejected: ["approve", "edit", "note", "merge"],
  answered: ["approve", "edit", "note"],
};
const SHORTCUTS = { approve: "a", reject: "r", star: "s", edit: "e", note: "n", merge: "m", "on-air": "o", "off-air": "x", answered: "d" };

function actionButton(action, label, extra = {}) {
  const key = SHORTCUTS[action];
  return el(
    "button",
    {
      type: "button",
      class: ["button", "button--small", `button--${action}`],
      dataset: { action, ...(extra.dataset || {}) },
      "aria-keyshortcuts": key && !extra.noShortcut ? key : null,
      "aria-pressed": extra.pressed,
      title: key && !extra.noShortcut ? t("console.shortcut_hint", { key }) : null,
    },
    label,
  );
}

function actionsFor(q, place) {
  const buttons = [];
  const duplicates = duplicateTargets(q);
  let names = STATUS_ACTIONS[q.status] || [];
  if (place === "on-air") names = ["off-air", "answered", "edit", "note"];
  for (const name of names) {
    if (name === "star") {
      buttons.push(actionButton("star", q.starred ? t("action.unstar") : t("action.star"), { pressed: q.starred ? "true" : "false" }));
    } else if (name === "merge") {
      // One click for a likely duplicate; otherwise (or for another target) an inline field.
      for (const into of duplicates) {
        buttons.push(actionButton("merge", t("action.merge_into", { id: into }), { dataset: { into: String(into) }, noShortcut: true }));
      }
      buttons.push(actionButton(duplicates.length ? "merge-open" : "merge", duplicates.length ? t("action.merge_other") : t("action.merge")));
    } else {
      buttons.push(actionButton(name, t(`action.${name}`)));
    }
  }
  if (place === "queue") {
    buttons.push(actionButton("move-up", t("action.move_up")), actionButton("move-down", t("action.move_down")));
  }
  return el("div", { class: "qcard__actions", role: "group", "aria-label": t("console.actions_label", { id: q.id }) }, buttons);
}

const flagLabels = { profanity: t("flag.profanity"), spam: t("flag.spam"), link: t("flag.link"), shouting: t("flag.shouting") };

function flagBadges(q) {
  const flags = q.flags || [];
  if (!flags.length) return null;
  return el(
    "ul",
    { class: "flags", "aria-label": t("console.flags_label") },
    flags.map((flag) => {
      const duplicate = /^duplicate:(\d+)$/.exec(flag);
      const text = duplicate
        ? t("flag.duplicate", { id: duplicate[1] })
        : Object.hasOwn(flagLabels, flag) ? flagLabels[flag] : flag;
      return el("li", { class: ["flag", duplicate ? "flag--duplicate" : `flag--${flag.replace(/[^a-z0-9_-]/gi, "")}`], dataset: { flag }, text });
    }),
  );
}

function segmentPicker(q) {
  const list = segments();
  if (!list.length) return null;
  const id = `segment-${q.id}`;
  const timeZone = programme?.event?.timezone || "Europe/Paris";
  return el(
    "div",
    { class: "qcard__segment field field--inline" },
    el("label", { for: id, text: t("console.segment") }),
    el(
      "select",
      { id, dataset: { action: "segment" } },
      el("option", { value: "", text: t("console.segment_none"), selected: !q.segment_id }),
      list.map((s) =>
        el("option", {
          value: s.id,
          selected: q.segment_id === s.id,
          text: [
            formatTime(s.expected_start || s.planned_start, timeZone),
            segmentTitle(s),
            s.id === programme.on_air && programme.state !== "ended" ? `(${t("console.segment_live")})` : "",
          ].filter(Boolean).join(" "),
        }),
      ),
    ),
  );
}

function editorBlock(q, editor) {
  const fieldId = `editor-${editor.kind}-${q.id}`;
  const labels = { text: t("console.edit_label"), note: t("console.note_label"), merge: t("console.merge_label") };
  const field =
    editor.kind === "merge"
      ? el("input", { id: fieldId, type: "text", inputmode: "numeric", class: "merge-input", dataset: { editor: "merge" }, value: editor.draft, autocomplete: "off" })
      : el("textarea", { id: fieldId, rows: editor.kind === "text" ? 4 : 2, dataset: { editor: editor.kind }, value: editor.draft });
  field.addEventListener("input", () => {
    editor.draft = field.value;
  });
  return el(
    "form",
    { class: ["qcard__editor", `qcard__editor--${editor.kind}`], dataset: { editorFor: q.id }, novalidate: true },
    editor.conflict && editor.kind === "text" ? el("p", { class: "qcard__conflict", text: t("console.conflict_current", { text: q.text }) }) : null,
    el("label", { for: fieldId, text: labels[editor.kind] }),
    field,
    el(
      "div",
      { class: "qcard__editor-actions" },
      el("button", { type: "submit", class: "button button--small button--primary", dataset: { action: "save-edit" }, text: editor.kind === "merge" ? t("action.merge_confirm") : t("action.save") }),
      el("button", { type: "button", class: "button button--small", dataset: { action: "cancel-edit" }, text: t("action.cancel") }),
    ),
    el("p", { class: "hint", text: t(`console.editor_hint_${editor.kind}`) }),
  );
}

function buildCard(q, place) {
  const editor = editors.get(q.id);
  const positionInQueue = place === "queue" ? queueRanks.get(q.id) : null;
  const node = el(
    "li",
    {
      class: [
        "qcard",
        `qcard--${q.status}`,
        q.id === selectedId && "selected",
        fresh.has(q.id) && "qcard--fresh",
        busy.has(q.id) && "qcard--busy",
        themeIsLive(q) && "qcard--theme-live",
      ],
      dataset: { questionId: q.id, status: q.status, theme: q.theme },
      tabindex: "-1",
      "aria-busy": busy.has(q.id) ? "true" : null,
      "aria-current": q.id === selectedId ? "true" : null,
      draggable: place === "queue" && !editor ? "true" : null,
    },
    el(
      "div",
      { class: "qcard__head" },
      positionInQueue ? el("span", { class: "qcard__position", title: t("console.queue_position"), text: `${positionInQueue}.` }) : null,
      el("span", { class: "qcard__id", text: `#${q.id}` }),
      el("span", { class: "theme-chip", title: themeTitle(q.theme), text: themeShort(q.theme) }),
      q.starred ? el("span", { class: "badge badge--star", title: t("console.starred"), text: "★" }) : null,
      q.id === onAirId ? el("span", { class: "badge badge--live", text: t("status.on_air") }) : null,
      themeIsLive(q) ? el("span", { class: "badge badge--theme-live", dataset: { role: "theme-live" }, text: t("console.theme_live") }) : null,
      place !== "pending" && place !== "queue" && place !== "approved" ? el("span", { class: `status status--${q.status}`, dataset: { status: q.status }, text: t(`status.${q.status}`) }) : null,
      el("span", { class: "qcard__votes", title: tn("vote.count", q.votes || 0), text: `▲ ${formatNumber(q.votes || 0)}` }),
      ageElement(q.created_at),
    ),
    flagBadges(q),
    editor?.kind === "text" ? editorBlock(q, editor) : el("p", { class: "qcard__text", text: q.text }),
    el("p", { class: "qcard__author", text: q.author ? q.author : t("question.anonymous") }),
    q.note && editor?.kind !== "note" ? el("p", { class: "qcard__note", text: t("console.note_is", { note: q.note }) }) : null,
    editor && editor.kind !== "text" ? editorBlock(q, editor) : null,
    segmentPicker(q),
    actionsFor(q, place),
  );
  return node;
}

function signature(q, place) {
  const editor = editors.get(q.id);
  const live = onAirSegment();
  return JSON.stringify([
    q.version, q.status, q.starred, q.queue_position, queueRanks.get(q.id), q.votes, q.text, q.note, q.segment_id, q.flags, place,
    q.id === onAirId, fresh.has(q.id), busy.has(q.id),
    editor ? [editor.kind, editor.conflict] : null,
    live ? [live.id, live.theme] : null, programme?.state,
    segments().map((s) => `${s.id}@${s.expected_start}`).join(","),
  ]);
}

function cardNode(id) {
  return cardCache.get(id)?.node || null;
}

// ---------------------------------------------------------------- render

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderNow();
  });
}

/** Put `nodes` in `parent` in order, moving as few nodes as possible (keeps focus). */
function reconcile(parent, nodes) {
  nodes.forEach((node, i) => {
    if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] || null);
  });
  while (parent.children.length > nodes.length) parent.lastElementChild.remove();
}

function renderNow() {
  renderQueued = false;
  const active = document.activeElement;
  const activeCard = active?.closest?.("[data-question-id]");
  const focusInfo = activeCard && {
    id: Number(activeCard.dataset.questionId),
    action: active.dataset.action || null,
    into: active.dataset.into || null,
    editor: active.dataset.editor || null,
    selection: "selectionStart" in active && active.dataset.editor ? [active.selectionStart, active.selectionEnd] : null,
    card: active === activeCard,
  };

  const buckets = { pending: [], queue: [], approved: [], answered: [], rejected: [], "on-air": [] };
  const counts = { pending: 0, approved: 0, "on-air": 0, answered: 0, rejected: 0 };
  for (const q of questions.values()) {
    const place = placeOf(q);
    counts[place === "queue" ? "approved" : place] += 1;
    if (place === "on-air" || matchesFilters(q)) buckets[place].push(q);
  }
  queueRanks = new Map(
    [...questions.values()]
      .filter((q) => placeOf(q) === "queue")
      .sort(byQueue)
      .map((q, i) => [q.id, i + 1]),
  );
  buckets.pending.sort(byCreated);
  buckets.queue.sort(byQueue);
  buckets.approved.sort(byVotes);
  buckets.answered.sort(byUpdatedDesc);
  buckets.rejected.sort(byUpdatedDesc);

  const seen = new Set();
  const nodeFor = (q, place) => {
    seen.add(q.id);
    const sig = signature(q, place);
    const cached = cardCache.get(q.id);
    if (cached && cached.signature === sig) return cached.node;
    const node = buildCard(q, place);
    cardCache.set(q.id, { node, signature: sig });
    return node;
  };
  for (const [name, list] of Object.entries(lists)) reconcile(list, buckets[name].map((q) => nodeFor(q, name)));
  reconcile(onAirSlot, buckets["on-air"].map((q) => nodeFor(q, "on-air")));
  for (const id of [...cardCache.keys()]) if (!seen.has(id)) cardCache.delete(id);

  for (const node of document.querySelectorAll("[data-empty-for]")) {
    node.hidden = $(node.dataset.emptyFor).children.length > 0;
  }
  for (const node of document.querySelectorAll("[data-count]")) {
    node.textContent = formatNumber(counts[node.dataset.count] ?? 0);
  }
  $("pending-count").textContent = formatNumber(counts.pending);
  $("pending-count-label").textContent = tn("console.pending_count", counts.pending);
  document.title = counts.pending ? `(${counts.pending}) ${baseTitle}` : baseTitle;

  if (focusInfo && document.activeElement !== active) restoreFocus(focusInfo);
}

function restoreFocus(info) {
  const card = cardNode(info.id);
  if (!card || !card.isConnected) return;
  let target = null;
  if (info.editor) target = card.querySelector(`[data-editor="${info.editor}"]`);
  else if (info.action && info.into) target = card.querySelector(`[data-action="${info.action}"][data-into="${info.into}"]`);
  else if (info.action) target = card.querySelector(`[data-action="${info.action}"]`);
  target = target || card;
  target.focus({ preventScroll: true });
  if (info.selection && typeof target.setSelectionRange === "function") {
    try {
      target.setSelectionRange(...info.selection);
    } catch {
      /* inputs of some types have no selection */
    }
  }
}

function focusEditor(id) {
  const field = cardNode(id)?.querySelector("[data-editor]");
  if (!field) return;
  field.focus();
  const end = field.value.length;
  field.setSelectionRange?.(end, end);
}

function flashCard(id, className) {
  const node = cardNode(id);
  node?.classList.add(className);
  setTimeout(() => cardNode(id)?.classList.remove(className), 3000);
}

/**
 * The strip at the top: "À l'antenne : Duplex Afrique · Coopératives — ensuite :
 * Duplex Asie", with the time left ticking (see tickStrip).
 */
function renderProgrammeBanner() {
  const strip = $("programme-strip");
  const live = onAirSegment();
  const next = segments().find((s) => s.id === programme?.next) || null;
  const state = programme?.state || "";
  strip.dataset.state = state;
  const parts = [];
  if (state === "ended") {
    parts.push(el("span", { class: "programme-strip__ended", text: t("now.ended") }));
  } else if (live) {
    parts.push(
      el("span", { class: "badge badge--live", text: state === "hold" ? t("control.state.hold") : t("status.on_air") }),
      " ",
      el("strong", { dataset: { role: "on-air-title" }, text: segmentTitle(live) }),
      live.theme ? [" · ", el("span", { class: "theme-chip theme-chip--live", dataset: { role: "on-air-theme", theme: live.theme }, title: themeTitle(live.theme), text: themeShort(live.theme) })] : null,
      state === "live" ? [" · ", el("span", { class: "programme-strip__left", dataset: { role: "countdown" } })] : null,
    );
  } else if (state === "before") {
    parts.push(el("span", { class: "programme-strip__label", text: t("console.before_show") }), " ", el("span", { class: "programme-strip__left", dataset: { role: "countdown" } }));
  }
  if (next && state !== "ended") {
    parts.push(
      el("span", { class: "programme-strip__sep", text: " — " }),
      el("span", { class: "programme-strip__label", text: live ? t("console.then") : t("now.first") }),
      " ",
      el("strong", { dataset: { role: "next-title" }, text: segmentTitle(next) }),
    );
  }
  const flat = parts.flat(Infinity).filter(Boolean);
  strip.replaceChildren(...flat);
  strip.hidden = flat.length === 0;
  tickStrip();
  for (const option of themeSelect.options) {
    if (!option.value) continue;
    option.dataset.title ??= option.textContent;
    option.textContent = live?.theme === option.value ? `${option.dataset.title} (${t("console.segment_live")})` : option.dataset.title;
  }
}

function tickStrip() {
  const node = document.querySelector('#programme-strip [data-role="countdown"]');
  if (!node || !programme) return;
  let text = "";
  if (programme.state === "before") {
    const first = segments().find((s) => s.id === programme.next) || segments()[0];
    const left = programmeClock.secondsUntil(first?.expected_start);
    text = left > 0 ? t("console.starts_in", { time: formatCountdown(left) }) : "";
  } else {
    const end = onAirEnds(programme);
    const left = end === null ? null : programmeClock.secondsUntil(end);
    text = left === null ? "" : t("console.time_left", { time: formatDuration(Math.max(0, Math.ceil(left))) });
  }
  if (node.textContent !== text) node.textContent = text;
}

// ---------------------------------------------------------------- selection & tabs

function visibleCards() {
  return [...document.querySelectorAll(".console [data-question-id]")].filter((node) => node.getClientRects().length > 0);
}

/** Select question `id` (null: none); `focus` also moves the keyboard focus to it. */
function select(id, { focus = false } = {}) {
  selectedId = id;
  for (const node of document.querySelectorAll(".qcard.selected")) {
    node.classList.remove("selected");
    node.removeAttribute("aria-current");
  }
  const node = cardNode(id);
  if (node) {
    node.classList.add("selected");
    node.setAttribute("aria-current", "true");
    if (focus) {
      showTabOf(node);
      node.focus({ preventScroll: true });
      node.scrollIntoView({ block: "nearest" });
    }
  }
}

function moveSelection(delta) {
  const cards = visibleCards();
  if (!cards.length) return;
  const at = cards.findIndex((node) => Number(node.dataset.questionId) === selectedId);
  const next = at < 0 ? (delta > 0 ? 0 : cards.length - 1) : Math.min(cards.length - 1, Math.max(0, at + delta));
  select(Number(cards[next].dataset.questionId), { focus: true });
}

function showTab(name) {
  consoleNode.dataset.activeTab = name;
  for (const button of document.querySelectorAll("[data-tab]")) {
    if (button.dataset.tab === name) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

function showTabOf(node) {
  const column = node.closest("[data-column]");
  if (column) showTab(column.dataset.column);
}

for (const button of document.querySelectorAll("[data-tab]")) {
  button.addEventListener("click", () => showTab(button.dataset.tab));
}

// ---------------------------------------------------------------- events

consoleNode.addEventListener("click", (event) => {
  const card = event.target.closest("[data-question-id]");
  if (!card) return;
  const id = Number(card.dataset.questionId);
  const button = event.target.closest("button[data-action]");
  if (selectedId !== id) select(id);
  if (!button || button.disabled) return;
  const action = actions[button.dataset.action];
  if (action && button.dataset.action !== "save-edit") {
    event.preventDefault();
    action(id, button);
  }
});

consoleNode.addEventListener("submit", (event) => {
  const form = event.target.closest("[data-editor-for]");
  if (!form) return;
  event.preventDefault();
  saveEditor(Number(form.dataset.editorFor));
});

consoleNode.addEventListener("change", (event) => {
  const picker = event.target.closest('select[data-action="segment"]');
  if (!picker) return;
  const id = Number(picker.closest("[data-question-id]").dataset.questionId);
  patch(id, { segment_id: picker.value || null });
});

consoleNode.addEventListener("focusin", (event) => {
  const card = event.target.closest("[data-question-id]");
  if (card && Number(card.dataset.questionId) !== selectedId) select(Number(card.dataset.questionId));
});

consoleNode.addEventListener("keydown", (event) => {
  // Inside an inline editor: Escape cancels, Ctrl/Cmd+Enter saves.
  const field = event.target.closest?.("[data-editor]");
  if (!field) return;
  const id = Number(field.closest("[data-question-id]").dataset.questionId);
  if (event.key === "Escape") {
    event.preventDefault();
    event.stopPropagation();
    closeEditor(id);
  } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey || (field.dataset.editor === "note" && !event.shiftKey))) {
    // Notes are short: Enter saves them (Shift+Enter for a new line).
    event.preventDefault();
    saveEditor(id);
  }
});

searchInput.addEventListener("input", () => {
  filters.search = searchInput.value;
  renderNow();
});
searchInput.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && searchInput.value) {
    event.preventDefault();
    searchInput.value = "";
    filters.search = "";
    renderNow();
  } else if (event.key === "Enter" || event.key === "ArrowDown") {
    event.preventDefault();
    moveSelection(selectedId === null ? 1 : 0);
  }
});
themeSelect.addEventListener("change", () => {
  filters.theme = themeSelect.value;
  renderNow();
});

// ---------------------------------------------------------------- keyboard shortcuts

function isTyping(target) {
  if (!(target instanceof Element)) return false;
  return Boolean(target.closest("input, textarea, select, [contenteditable=''], [contenteditable='true']"));
}

function toggleHelp() {
  if (helpDialog.open) helpDialog.close();
  else helpDialog.showModal();
}
$("shortcuts-button").addEventListener("click", toggleHelp);

const SHORTCUT_ACTIONS = { a: "approve", r: "reject", s: "star", e: "edit", n: "note", m: "merge-open", o: "on-air", d: "answered" };

document.addEventListener("keydown", (event) => {
  if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
  if (isTyping(event.target)) return;
  if (helpDialog.open) {
    if (event.key === "?") {
      event.preventDefault();
      helpDialog.close();
    }
    return;
  }
  // Let Enter/Space reach the focused button.
  const key = event.key;
  if (key === "?") {
    event.preventDefault();
    toggleHelp();
  } else if (key === "/") {
    event.preventDefault();
    searchInput.focus();
    searchInput.select();
  } else if ((key === "J" || key === "ArrowDown") && event.shiftKey) {
    if (selectedId !== null) {
      event.preventDefault();
      moveByKeyboard(selectedId, +1);
    }
  } else if ((key === "K" || key === "ArrowUp") && event.shiftKey) {
    if (selectedId !== null) {
      event.preventDefault();
      moveByKeyboard(selectedId, -1);
    }
  } else if (key === "j" || key === "ArrowDown") {
    event.preventDefault();
    moveSelection(+1);
  } else if (key === "k" || key === "ArrowUp") {
    event.preventDefault();
    moveSelection(-1);
  } else if (key === "x") {
    event.preventDefault();
    takeOffAir();
  } else if (key === "Escape") {
    if (selectedId !== null && editors.has(selectedId)) closeEditor(selectedId);
  } else if (Object.hasOwn(SHORTCUT_ACTIONS, key) && selectedId !== null && questions.has(selectedId)) {
    const name = SHORTCUT_ACTIONS[key];
    const place = placeOf(questions.get(selectedId));
    const allowed = place === "on-air" ? ["answered", "edit", "note"] : STATUS_ACTIONS[questions.get(selectedId).status] || [];
    const alias = name === "merge-open" ? "merge" : name;
    if (!allowed.includes(alias)) return;
    event.preventDefault();
    actions[name](selectedId);
  }
});

// ---------------------------------------------------------------- drag and drop (queue)

let draggedId = null;

function clearDropMarks() {
  for (const node of lists.queue.querySelectorAll(".drop-before, .drop-after")) node.classList.remove("drop-before", "drop-after");
}

function dropTarget(event) {
  const card = event.target.closest?.("#queue-list > [data-question-id]");
  if (!card) return { id: null, after: true, card: null };
  const rect = card.getBoundingClientRect();
  return { id: Number(card.dataset.questionId), after: event.clientY > rect.top + rect.height / 2, card };
}

lists.queue.addEventListener("dragstart", (event) => {
  const card = event.target.closest?.("[data-question-id]");
  if (!card) return;
  draggedId = Number(card.dataset.questionId);
  event.dataTransfer.effectAllowed = "move";
  event.dataTransfer.setData("text/plain", String(draggedId));
  card.classList.add("dragging");
});

lists.queue.addEventListener("dragover", (event) => {
  if (draggedId === null) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "move";
  clearDropMarks();
  const target = dropTarget(event);
  if (target.card && target.id !== draggedId) target.card.classList.add(target.after ? "drop-after" : "drop-before");
});

lists.queue.addEventListener("dragleave", (event) => {
  if (!lists.queue.contains(event.relatedTarget)) clearDropMarks();
});

lists.queue.addEventListener("drop", (event) => {
  if (draggedId === null) return;
  event.preventDefault();
  const target = dropTarget(event);
  const id = draggedId;
  draggedId = null;
  clearDropMarks();
  if (target.id !== id) moveInQueue(id, target.id, target.after);
});

lists.queue.addEventListener("dragend", () => {
  draggedId = null;
  clearDropMarks();
  for (const node of lists.queue.querySelectorAll(".dragging")) node.classList.remove("dragging");
});

// ---------------------------------------------------------------- realtime

let arrivals = 0;
let arrivalsTimer = null;

function announceArrival() {
  arrivals += 1;
  clearTimeout(arrivalsTimer);
  arrivalsTimer = setTimeout(() => {
    notice(tn("console.new_questions", arrivals));
    arrivals = 0;
  }, 1500);
}

function loadAll() {
  loadQuestions();
  loadOnAir();
  // The running order comes with page_config, then as the `programme` push at
  // every (re)connection and change.
}

// Load now (the lists must not wait for the live connection), and again at every
// (re)connection, to catch up with whatever was pushed while we were not listening.
setProgramme(config.programme);
programmeClock.tick(tickStrip, 250);
loadAll();
const socket = connectSocket("/moderation", $("live-status"));
if (socket) {
  socket.on("connect", loadAll);
  socket.on("connect_error", () => {
    // Refused by the server (not `active`): the session has probably ended.
    if (!socket.active) loadQuestions();
  });
  socket.on("question", (q) => {
    if (!q || q.id === undefined) return;
    const isNew = !questions.has(q.id);
    if (upsert(q) && isNew && initialLoadDone && !q.merged_into) {
      fresh.add(q.id);
      setTimeout(() => {
        fresh.delete(q.id);
        scheduleRender();
      }, 4000);
      if (q.status === "pending") announceArrival();
    }
  });
  socket.on("question_removed", ({ id } = {}) => {
    if (questions.has(id)) removeQuestion(id);
  });
  socket.on("on_air", (q) => setOnAir(q || null));
  socket.on("programme", (body) => setProgramme(body));
  // The session ended (signed out elsewhere, password or role reset, expiry):
  // the server closes this socket; sign in again.
  socket.on("signed_out", onSessionEnded(goToLogin));
  // The server lost pushes between its processes (Redis away): what we show
  // may lack what was pushed meanwhile, so fetch it all again.
  socket.on("resync", loadAll);
}

setInterval(() => refreshRelativeTimes(consoleNode), 30_000);

// Lower third for a broadcast tool's browser source (/overlay, 1920x1080, transparent).
// Shows the on-air question; slides in when one goes on air, out when cleared.
// `?demo=1` shows a sample question, to place the source without a live show.
// #lower-third's only class is `visible` (while shown): its look hangs on its id.
import { config, connectSocket, fetchJSON, t, themeTitle } from "./common.js";

const box = document.getElementById("lower-third");
const textNode = document.getElementById("lower-third-text");
const authorNode = document.getElementById("lower-third-author");
const themeNode = document.getElementById("lower-third-theme");

const TRANSITION_MS = 700; // keep in step with overlay.css
let current = null; // the question shown (or being shown)
let pending = null; // the next content, while the previous one slides out
let timer = null;

// Longer questions get smaller type so that 500 characters still fit.
function lengthClass(text) {
  const length = Array.from(text || "").length;
  if (length > 320) return "xlong";
  if (length > 200) return "long";
  if (length > 110) return "medium";
  return "short";
}

function fill(question) {
  textNode.textContent = question.text || "";
  authorNode.textContent = question.author ? t("overlay.asked_by", { author: question.author }) : "";
  authorNode.hidden = !question.author;
  themeNode.textContent = themeTitle(question.theme);
  themeNode.hidden = !question.theme;
  box.dataset.length = lengthClass(question.text);
  box.dataset.questionId = question.id ?? "";
}

function setVisible(visible) {
  box.classList.toggle("visible", visible);
  box.setAttribute("aria-hidden", visible ? "false" : "true");
}

/** Put `question` (or nothing, when null) on screen, with the slide transition. */
function show(question) {
  clearTimeout(timer);
  if (!question) {
    current = null;
    pending = null;
    setVisible(false);
    return;
  }
  const visible = box.classList.contains("visible");
  if (visible && current && current.id === question.id) {
    current = question; // same question edited while on air: update in place
    fill(question);
    return;
  }
  current = question;
  if (!visible) {
    fill(question);
    // Next frame, so the browser sees the hidden state first and animates.
    requestAnimationFrame(() => requestAnimationFrame(() => setVisible(true)));
    return;
  }
  pending = question;
  setVisible(false);
  timer = setTimeout(() => {
    if (pending) {
      fill(pending);
      pending = null;
      setVisible(true);
    }
  }, TRANSITION_MS);
}

const params = new URLSearchParams(window.location.search);
if (params.get("demo")) {
  show({ id: 0, text: t("overlay.demo_text"), author: t("overlay.demo_author"), theme: config.themes?.[0]?.id });
} else {
  const socket = connectSocket("/", null, { votes: "batched" });
  const sync = async () => {
    try {
      const question = await fetchJSON("/api/on-air");
      show(question && question.id !== undefined ? question : null);
    } catch {
      /* keep what is shown; the next on_air event will correct it */
    }
  };
  if (socket) {
    socket.on("connect", sync);
    socket.on("on_air", (question) => show(question || null));
    socket.on("question", (question) => {
      if (current && question && question.id === current.id) {
        if (question.on_air === false || question.merged_into) show(null);
        else show({ ...current, ...question });
      }
    });
    socket.on("question_removed", ({ id } = {}) => {
      if (current && id === current.id) show(null);
    });
  } else {
    sync();
  }
}

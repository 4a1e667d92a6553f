// Staff sign-in (/login): POST /api/session, then go to page_config.next.
import { config, disableFor, fetchJSON, showStatus, t } from "./common.js";

const form = document.getElementById("login-form");
const username = document.getElementById("login-username");
const password = document.getElementById("login-password");
const submit = document.getElementById("login-submit");
const errorNode = document.getElementById("login-error");

/**
 * Only a path on this site: never send a freshly signed-in moderator elsewhere.
 * Parsed as the browser will parse it (it drops tabs and line breaks, reads
 * "\\" as "/"), then kept only if it stays on this origin.
 */
function safeNext(next) {
  if (typeof next !== "string" || !next.startsWith("/")) return "/moderation";
  let url;
  try {
    url = new URL(next, window.location.origin);
  } catch {
    return "/moderation";
  }
  if (url.origin !== window.location.origin || url.pathname.startsWith("//")) return "/moderation";
  return url.pathname + url.search + url.hash;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (submit.disabled) return;
  const name = username.value.trim();
  if (!name || !password.value) {
    showStatus(errorNode, t("login.error_missing"), "error");
    (name ? password : username).focus();
    return;
  }
  submit.disabled = true;
  submit.setAttribute("aria-busy", "true");
  showStatus(errorNode, "");
  let retryAfter = null;
  try {
    await fetchJSON("/api/session", { method: "POST", json: { username: name, password: password.value } });
    window.location.assign(safeNext(config.next));
    return;
  } catch (error) {
    const fallback = error.status === 401 ? t("login.error_invalid") : error.message;
    showStatus(errorNode, error.body?.message || fallback, "error");
    if (error.status === 429) retryAfter = error.retryAfter ?? 60;
    password.value = "";
    password.focus();
  }
  submit.removeAttribute("aria-busy");
  submit.disabled = false;
  if (retryAfter !== null) {
    const label = t("login.submit");
    disableFor(submit, retryAfter, (left) => {
      submit.textContent = left > 0 ? t("login.retry_in", { seconds: left }) : label;
    });
  }
});

// Sending again by itself what the server shed or never answered: exponential
// back-off with full jitter, never sooner than Retry-After, for a bounded time.

/**
 * Timings in milliseconds. `window.tvRetryConfig` (set before the page's
 * scripts, e.g. by a test's init script) overrides any of them.
 */
export const retrySettings = {
  /** How long one request may go unanswered. */
  timeoutMs: 10_000,
  /** The first wait is drawn in [minMs, firstMs]; each next ceiling doubles, up to capMs. */
  firstMs: 2_000,
  minMs: 1_000,
  capMs: 30_000,
  /** A question stops being sent again after this long. */
  giveUpMs: 120_000,
  /** Votes are retried quietly, and not for as long. */
  voteGiveUpMs: 30_000,
  voteAttempts: 4,
  ...(globalThis.tvRetryConfig || {}),
};

/** No answer came (network, timeout, a proxy's 502/504): the server may have done it. */
export function isAmbiguous(error) {
  return error?.status === 0 || error?.status === 502 || error?.status === 504;
}

/**
 * Worth sending again by itself: the server shed it (503, whatever the
 * code), or no answer came. A 429 is the viewer's own limit: not retried.
 */
export function isRetryable(error) {
  return error?.status === 503 || isAmbiguous(error);
}

/**
 * The wait before attempt `failures` + 1: full jitter below an exponential
 * ceiling, so that an audience refused at the same instant does not come
 * back at the same instant; never sooner than the server's Retry-After.
 */
export function backoffMs(failures, retryAfterS, settings = retrySettings) {
  const ceiling = Math.min(settings.capMs, settings.firstMs * 2 ** failures);
  const jittered = Math.max(settings.minMs, Math.random() * ceiling);
  return Math.max(jittered, (Number(retryAfterS) || 0) * 1000);
}

/**
 * Call `send(attempt)` until it resolves, fails in a way not worth retrying,
 * or the next attempt would come after `giveUpMs` (or `maxAttempts`).
 * `onWait({ at, error, failures })` is called before each wait (`at`: epoch ms
 * of the next attempt). Returns `{ promise, stop }`; the promise resolves with
 * `{ outcome: "done", value }`, `{ outcome: "failed" | "gave_up" | "stopped", error }`.
 * `stop()` cancels the wait; a request already in flight still counts if it succeeds.
 */
export function retrying(send, { giveUpMs = retrySettings.giveUpMs, maxAttempts = Infinity, onWait } = {}) {
  let stopped = false;
  let timer = null;
  let wake = null;
  const promise = (async () => {
    const deadline = Date.now() + giveUpMs;
    for (let failures = 0; ; ) {
      try {
        return { outcome: "done", value: await send(failures) };
      } catch (error) {
        failures += 1;
        if (stopped) return { outcome: "stopped", error };
        if (!isRetryable(error)) return { outcome: "failed", error };
        const delay = backoffMs(failures - 1, error.retryAfter);
        if (failures >= maxAttempts || Date.now() + delay > deadline) return { outcome: "gave_up", error };
        onWait?.({ at: Date.now() + delay, error, failures });
        const woke = await new Promise((resolve) => {
          wake = resolve;
          timer = setTimeout(() => resolve(true), delay);
        });
        if (!woke) return { outcome: "stopped", error };
      }
    }
  })();
  return {
    promise,
    stop() {
      stopped = true;
      clearTimeout(timer);
      wake?.(false);
    },
  };
}

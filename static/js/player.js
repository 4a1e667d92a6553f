// The programme player of the watch page (WHEP, RFC 9725), and the WebRTC
// helpers the contributor page shares with it (WHIP is the same exchange).
// Standard APIs only, so that it plays in Chromium, Firefox and Safari.
import { ApiError, t } from "./common.js";

/** Seconds to wait before the n-th new attempt (0-based): 1, 2, 5, 10, then 15. */
const BACKOFF_S = [1, 2, 5, 10, 15];
/** A "disconnected" connection often comes back by itself: give it this long. */
const DISCONNECT_GRACE_MS = 3000;
/** Without trickle ICE the offer carries every candidate: wait for them, not forever. */
const GATHER_TIMEOUT_MS = 2000;
/** No new frame for this long: the caption says we are reconnecting... */
const FROZEN_MS = 2500;
/** ...and for this long: the connection is restarted. */
const STALL_MS = 10_000;

// Browsers decode Opus as mono unless their own offer asks for stereo=1;
// the programme's sound is stereo.
export function withStereoOpus(sdp) {
  const match = sdp.match(/a=rtpmap:(\d+) opus\/48000[^\r\n]*/i);
  if (!match) return sdp;
  const pt = match[1];
  const fmtp = new RegExp(`a=fmtp:${pt} ([^\r\n]*)`);
  if (fmtp.test(sdp)) {
    return sdp.replace(fmtp, (line, params) =>
      /stereo=/.test(params) ? line : `a=fmtp:${pt} ${params};stereo=1;sprop-stereo=1`);
  }
  return sdp.replace(match[0], `${match[0]}\r\na=fmtp:${pt} stereo=1;sprop-stereo=1`);
}

export function backoffSeconds(attempt) {
  return BACKOFF_S[Math.min(Math.max(0, attempt), BACKOFF_S.length - 1)];
}

export function webrtcSupported() {
  return typeof window.RTCPeerConnection === "function" && typeof window.MediaStream === "function";
}

/** Resolve once ICE gathering is complete, or after `timeoutMs` with what there is. */
export function waitForIceGathering(pc, timeoutMs = GATHER_TIMEOUT_MS) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      pc.removeEventListener("icecandidate", onCandidate);
      resolve();
    };
    const check = () => pc.iceGatheringState === "complete" && done();
    // Some browsers signal the end only with a null candidate.
    const onCandidate = (event) => !event.candidate && done();
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
    pc.addEventListener("icecandidate", onCandidate);
  });
}

/**
 * ICE servers announced by a WHIP/WHEP answer's `Link` headers (RFC 9725 §4.6):
 * `<turn:host?transport=udp>; rel="ice-server"; username="u"; credential="p"`.
 */
export function iceServersFromLink(header) {
  if (!header) return [];
  const servers = [];
  for (const part of header.split(/,(?=\s*<)/)) {
    const match = /^\s*<([^>]*)>(.*)$/.exec(part);
    if (!match) continue;
    const params = {};
    for (const param of match[2].split(";")) {
      const kv = /^\s*([\w-]+)\s*=\s*"?([^"]*)"?\s*$/.exec(param);
      if (kv) params[kv[1].toLowerCase()] = kv[2];
    }
    if (params.rel !== "ice-server") continue;
    const server = { urls: match[1] };
    if (params.username) server.username = params.username;
    if (params.credential) server.credential = params.credential;
    servers.push(server);
  }
  return servers;
}

/**
 * POST an SDP offer to a WHIP or WHEP endpoint. Resolves with the answer, the
 * session's absolute URL and any ICE servers it announced; rejects with an
 * ApiError (status 0 when the network failed).
 */
export async function postOffer(url, sdp, headers = {}) {
  let response;
  try {
    response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: { "Content-Type": "application/sdp", Accept: "application/sdp", ...headers },
      body: sdp,
    });
  } catch {
    throw new ApiError({ status: 0, code: "network", message: t("error.network") });
  }
  if (response.status !== 201 && response.status !== 200) {
    let body = null;
    try {
      if ((response.headers.get("Content-Type") || "").includes("json")) body = await response.json();
    } catch {
      body = null;
    }
    throw new ApiError({
      status: response.status,
      code: body?.error || `http_${response.status}`,
      message: body?.message || t("error.generic"),
      body,
    });
  }
  const location = response.headers.get("Location");
  return {
    answer: await response.text(),
    location: location ? new URL(location, response.url || window.location.href).href : null,
    iceServers: iceServersFromLink(response.headers.get("Link")),
  };
}

/**
 * End a WHIP/WHEP session. `keepalive`: the request outlives the page (pagehide;
 * sendBeacon cannot send DELETE). Never rejects.
 */
export function endSession(location, headers = {}, { keepalive = false } = {}) {
  if (!location) return Promise.resolve();
  return fetch(location, { method: "DELETE", headers, keepalive, credentials: "same-origin", cache: "no-store" })
    .then(() => undefined, () => undefined);
}

/**
 * Watch a peer connection: `onLost(reason)` once when it failed, stayed
 * disconnected for more than `graceMs`, or the server closed its DTLS (it
 * ended the session: ICE would take seconds to notice); `onState(state)` at
 * every change. Firefox before 113 has no connectionState: ICE's state stands in.
 */
export function watchConnection(pc, { onState, onLost, graceMs = DISCONNECT_GRACE_MS }) {
  let graceTimer = null;
  let lost = false;
  const state = () => pc.connectionState || pc.iceConnectionState;
  const lose = (reason) => {
    if (lost) return;
    lost = true;
    clearTimeout(graceTimer);
    onLost(reason);
  };
  const update = () => {
    const now = state();
    onState?.(now);
    if (now === "failed") lose("failed");
    else if (now === "disconnected") {
      if (!graceTimer) graceTimer = setTimeout(() => ["disconnected", "failed"].includes(state()) && lose("disconnected"), graceMs);
    } else {
      clearTimeout(graceTimer);
      graceTimer = null;
    }
  };
  const watched = new WeakSet();
  const watchTransports = () => {
    for (const part of [...pc.getSenders(), ...pc.getReceivers()]) {
      const transport = part.transport;
      if (!transport || watched.has(transport)) continue;
      watched.add(transport);
      transport.addEventListener("statechange", () => {
        if (transport.state === "closed" || transport.state === "failed") lose(`dtls-${transport.state}`);
      });
    }
  };
  pc.addEventListener("connectionstatechange", watchTransports);
  pc.addEventListener("connectionstatechange", update);
  pc.addEventListener("iceconnectionstatechange", () => {
    if (pc.iceConnectionState === "failed") lose("ice-failed");
    if (!("connectionState" in pc)) update();
  });
  return () => clearTimeout(graceTimer);
}

/** The `framesDecoded` of a connection's inbound video (getStats), or null. */
async function inboundVideoFrames(pc) {
  try {
    const report = await pc.getStats();
    let frames = null;
    report.forEach((stat) => {
      if (stat.type === "inbound-rtp" && (stat.kind || stat.mediaType) === "video" && typeof stat.framesDecoded === "number") {
        frames = (frames || 0) + stat.framesDecoded;
      }
    });
    return frames;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- the player

/**
 * The programme, played over WHEP into `#programme-video`, with its slate,
 * status caption and sound button. States: idle, connecting, playing,
 * reconnecting, unavailable (the server has no video for now), unsupported.
 */
export class WhepPlayer {
  constructor(root, { url = "/whep", iceServers = [] } = {}) {
    this.root = root;
    this.url = url;
    this.iceServers = iceServers;
    this.video = root.querySelector("#programme-video");
    this.slate = root.querySelector("#player-slate");
    this.caption = root.querySelector("#player-status");
    this.soundButton = root.querySelector("#player-unmute");
    this.playButton = root.querySelector("#player-play");
    this.liveBadge = root.querySelector("#player-live");
    this.state = "idle";
    this.programmeState = null;
    this.pc = null;
    this.location = null;
    this.generation = 0;
    this.attempt = 0;
    /** Sessions the server accepted since the page opened (a reconnection adds one). */
    this.sessions = 0;
    this.retryTimer = null;
    this.unwatch = null;
    this.statsFrames = 0;
    this.progressMark = "";
    this.lastProgress = Date.now();

    this.video.muted = true; // autoplay with sound is refused everywhere; the button offers it
    this.video.addEventListener("playing", () => this.onPicture());
    this.video.addEventListener("resize", () => this.onPicture());
    this.soundButton?.addEventListener("click", () => this.toggleSound());
    this.playButton?.addEventListener("click", () => this.play());
    window.addEventListener("pagehide", () => this.leave());
    window.addEventListener("pageshow", (event) => event.persisted && this.start());
    window.addEventListener("online", () => this.retryNow());
    setInterval(() => this.checkProgress(), 1000);
  }

  /** Connect, unless already connected or connecting. */
  start() {
    if (!webrtcSupported()) return this.setState("unsupported");
    if (this.pc) return;
    this.connect();
  }

  /** The show's state ("before", "live", "hold", "ended") for the caption. */
  setProgramme(programme) {
    this.programmeState = programme?.state || null;
    this.render();
  }

  /** Frames decoded so far (the element's count, else the connection's statistics). */
  framesDecoded() {
    return this.shownFrames() || this.statsFrames;
  }

  /** Sound received so far (getStats), or null before a connection: for support and tests. */
  async inboundAudio() {
    if (!this.pc) return null;
    try {
      let audio = null;
      (await this.pc.getStats()).forEach((stat) => {
        if (stat.type === "inbound-rtp" && (stat.kind || stat.mediaType) === "audio") {
          audio = { samples: stat.totalSamplesReceived || 0, concealed: stat.concealedSamples || 0, packets: stat.packetsReceived || 0 };
        }
      });
      return audio;
    } catch {
      return null;
    }
  }

  shownFrames() {
    const quality = typeof this.video.getVideoPlaybackQuality === "function" ? this.video.getVideoPlaybackQuality() : null;
    return quality?.totalVideoFrames || 0;
  }

  async connect() {
    const generation = ++this.generation;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.lastProgress = Date.now(); // each attempt gets the whole stall delay to show frames
    // While the server has no video, the caption keeps saying so between attempts.
    if (this.state !== "unavailable") this.setState(this.attempt > 0 || this.state === "reconnecting" ? "reconnecting" : "connecting");
    let pc;
    try {
      pc = new RTCPeerConnection({ iceServers: this.iceServers, bundlePolicy: "max-bundle" });
    } catch {
      return this.retry("unavailable");
    }
    this.pc = pc;
    const stream = new MediaStream();
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addEventListener("track", (event) => {
      if (generation !== this.generation) return;
      stream.addTrack(event.track);
      if (this.video.srcObject !== stream) this.video.srcObject = stream;
      this.play();
    });
    this.unwatch = watchConnection(pc, {
      onState: (state) => generation === this.generation && this.onConnectionState(state),
      onLost: () => generation === this.generation && this.reconnect(),
    });
    try {
      const offer = await pc.createOffer();
      await pc.setLocalDescription({ type: "offer", sdp: withStereoOpus(offer.sdp) });
      await waitForIceGathering(pc);
      if (generation !== this.generation) return;
      const { answer, location, iceServers } = await postOffer(this.url, pc.localDescription.sdp);
      if (generation !== this.generation) {
        endSession(location);
        return;
      }
      this.location = location;
      if (iceServers.length) this.iceServers = iceServers; // used from the next attempt
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
      this.sessions += 1;
    } catch (error) {
      if (generation !== this.generation) return;
      // 404/501/503: no video service (yet); the slate stays, we try again later.
      const noService = error instanceof ApiError && [404, 405, 501, 503].includes(error.status);
      const full = error instanceof ApiError && error.code === "viewers_full";
      this.teardown();
      // A full server says when to come back; each player adds its own share of
      // that again, so that the waiting audience does not return all at once.
      const wait = full ? Number(error.body?.retry_after_s) || 15 : 0;
      this.retry(full ? "full" : noService ? "unavailable" : "reconnecting", wait * (1 + Math.random()));
    }
  }

  onConnectionState(state) {
    if (state === "connected") {
      this.attempt = 0;
      this.lastProgress = Date.now();
      if (this.video.videoWidth > 0) this.setState("playing");
    } else if (state === "disconnected" && this.state === "playing") {
      this.setState("reconnecting"); // said at once; the new offer waits for the grace period
    }
  }

  onPicture() {
    if (this.video.videoWidth > 0 && this.pc && (this.pc.connectionState || this.pc.iceConnectionState) !== "disconnected") {
      this.setState("playing");
    }
  }

  /** Drop the connection (telling the server) and try again after the back-off. */
  reconnect() {
    this.teardown();
    this.retry("reconnecting");
  }

  teardown({ keepalive = false } = {}) {
    this.generation += 1;
    this.unwatch?.();
    this.unwatch = null;
    if (this.location) endSession(this.location, {}, { keepalive });
    this.location = null;
    if (this.pc) {
      try {
        this.pc.close();
      } catch {
        /* already closed */
      }
    }
    this.pc = null;
  }

  retry(state, atLeastSeconds = 0) {
    const seconds = Math.max(backoffSeconds(this.attempt), atLeastSeconds);
    this.attempt += 1;
    this.setState(state);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), seconds * 1000);
  }

  /** Back online: do not wait for the rest of the back-off. */
  retryNow() {
    if (this.retryTimer) this.connect();
  }

  leave() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.teardown({ keepalive: true });
    this.attempt = 0;
    this.state = "idle";
  }

  /** Poll decoded frames; a picture frozen while "connected" means a dead session. */
  async checkProgress() {
    const pc = this.pc;
    if (!pc) return;
    const frames = await inboundVideoFrames(pc);
    if (pc !== this.pc) return;
    if (frames !== null) this.statsFrames = frames;
    const now = Date.now();
    // Either count moving is progress: a hidden tab may stop painting, not decoding.
    const mark = `${this.shownFrames()}/${this.statsFrames}`;
    if (mark !== this.progressMark) {
      this.progressMark = mark;
      this.lastProgress = now;
      if (this.video.videoWidth > 0 && (pc.connectionState || pc.iceConnectionState) === "connected") this.setState("playing");
    } else if (now - this.lastProgress > STALL_MS && ["playing", "reconnecting"].includes(this.state)) {
      this.reconnect();
    } else if (now - this.lastProgress > FROZEN_MS && this.state === "playing") {
      this.setState("reconnecting"); // said before ICE notices; it comes back with the frames
    }
  }

  play() {
    const attempt = this.video.play();
    if (!attempt || typeof attempt.then !== "function") return;
    attempt.then(
      () => {
        if (this.playButton) this.playButton.hidden = true;
      },
      (error) => {
        // Low-power modes refuse even muted autoplay: a tap starts it.
        if (error?.name === "NotAllowedError" && this.playButton) this.playButton.hidden = false;
      },
    );
  }

  toggleSound() {
    this.video.muted = !this.video.muted;
    if (!this.video.muted) {
      this.video.volume = 1;
      this.play();
    }
    this.render();
  }

  setState(state) {
    this.state = state;
    this.render();
  }

  /** The caption says in words what is happening; the slate stays until a picture plays. */
  render() {
    const { state } = this;
    const picture = state === "playing" || (state === "reconnecting" && this.video.videoWidth > 0);
    this.root.dataset.state = state;
    if (this.slate) this.slate.hidden = picture;
    let caption = "";
    if (state === "connecting") caption = t("player.connecting");
    else if (state === "reconnecting") caption = t("player.reconnecting");
    else if (state === "unavailable") caption = t("player.unavailable");
    else if (state === "full") caption = t("player.full");
    else if (state === "unsupported") caption = t("player.unsupported");
    else if (state === "playing" && this.programmeState === "before") caption = t("player.not_started");
    else if (state === "playing" && this.programmeState === "ended") caption = t("now.ended");
    if (this.caption) {
      if (this.caption.textContent !== caption) this.caption.textContent = caption;
      this.caption.hidden = !caption;
      this.caption.dataset.kind = ["reconnecting", "unavailable", "full", "unsupported"].includes(state) ? "warning" : "info";
    }
    if (this.liveBadge) this.liveBadge.hidden = !(state === "playing" && (this.programmeState === "live" || this.programmeState === "hold"));
    if (this.soundButton) {
      this.soundButton.hidden = !picture;
      const muted = this.video.muted;
      const label = this.soundButton.querySelector("[data-role='label']") || this.soundButton;
      label.textContent = muted ? t("player.unmute") : t("player.mute");
      this.soundButton.dataset.muted = String(muted);
    }
  }
}

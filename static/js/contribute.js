// Contributor page (/contribute/{feed}): a remote site's technician checks the
// camera and microphone, publishes over WHIP with the feed's token, and follows
// the tally, the director's cues and the programme.
import {
  ApiError,
  config,
  el,
  findSegment,
  formatCountdown,
  formatNumber,
  formatTime,
  onAirEnds,
  ProgrammeClock,
  segmentTitle,
  showStatus,
  t,
} from "./common.js";
import { backoffSeconds, endSession, postOffer, waitForIceGathering, watchConnection, webrtcSupported } from "./player.js";

const $ = (id) => document.getElementById(id);
const FEED = config.feed || "";
const TOKEN = config.token || "";
const SITE_ZONE = config.timezone || undefined;
const PARIS = "Europe/Paris";

/** Resolution choices: capture size and the encoder's ceiling. */
const RESOLUTIONS = {
  1080: { width: 1920, height: 1080, maxBitrate: 4_500_000 },
  720: { width: 1280, height: 720, maxBitrate: 2_500_000 },
  480: { width: 854, height: 480, maxBitrate: 1_200_000 },
};
/** Statuses after which a new attempt cannot succeed: the technician must act. */
const FATAL = new Set([400, 401, 403, 404, 415, 422]);
/** A feed_status older than this says nothing about now. */
const STATUS_STALE_MS = 4000;

// ---------------------------------------------------------------- clocks and programme

const clock = new ProgrammeClock();
let programme = null;

function setText(node, text) {
  if (node && node.textContent !== text) node.textContent = text;
}

function tickClocks(now) {
  for (const [id, zone] of [["clock-local", SITE_ZONE], ["clock-paris", PARIS]]) {
    const node = $(id);
    if (!node) continue;
    setText(node, formatTime(now, zone, { seconds: true }));
    node.dateTime = new Date(now).toISOString();
  }
}

/** The source a segment shows: its duplex feed, or the studio camera. */
function sourceOf(segment) {
  if (!segment) return null;
  if (segment.feed) return segment.feed;
  return segment.kind === "studio" || segment.kind === "debate" ? "studio" : null;
}

/** This site's next (or current) segment. */
function mySegment() {
  return (programme?.segments || []).find((s) => s.feed === FEED && !s.actual_end && !s.skipped) || null;
}

function renderProgrammeNow() {
  if (!programme || !$("contribute-programme")) return;
  const { state } = programme;
  const onAir = findSegment(programme, programme.on_air);
  const next = findSegment(programme, programme.next);
  let onAirText = "—";
  let leftText = "";
  if (state === "before") onAirText = t("contribute.not_started");
  else if (state === "ended") onAirText = t("now.ended");
  else if (onAir) {
    onAirText = segmentTitle(onAir);
    const end = onAirEnds(programme);
    leftText = state === "hold" ? t("now.hold") : end === null ? "" : t("now.time_left", { time: formatCountdown(clock.secondsUntil(end)) });
  }
  setText($("programme-on-air"), onAirText);
  setText($("programme-left"), leftText);
  setText($("programme-next"), next ? segmentTitle(next) : "—");
  setText($("programme-next-in"), next ? countdownTo(next.expected_start) : "");

  const mine = mySegment();
  $("programme-mine-row").hidden = !mine;
  if (mine) {
    const now = mine.id === programme.on_air && state !== "ended";
    setText($("programme-mine"), now
      ? t("contribute.your_slot_now", { title: segmentTitle(mine) })
      : t("contribute.your_slot_at", { title: segmentTitle(mine), paris: formatTime(mine.expected_start, PARIS), local: formatTime(mine.expected_start, SITE_ZONE) }));
    setText($("programme-mine-in"), now ? "" : countdownTo(mine.expected_start));
  }
  if (!tallyPushed) showTally(derivedTally());
}

function countdownTo(iso) {
  const left = clock.secondsUntil(iso);
  if (left === null) return "";
  return left > 0 ? t("now.in", { time: formatCountdown(left) }) : t("now.soon");
}

function renderProgramme(body) {
  if (!body || !Array.isArray(body.segments)) return;
  clock.update(body);
  programme = body;
  renderProgrammeNow();
}

// ---------------------------------------------------------------- tally

let tallyPushed = false;

/** Until the server says, the tally follows from the programme. */
function derivedTally() {
  if (!programme || !["live", "hold", "before"].includes(programme.state)) return "off";
  if (sourceOf(findSegment(programme, programme.on_air)) === FEED) return "on_air";
  if (sourceOf(findSegment(programme, programme.next)) === FEED) return "next";
  return "off";
}

function showTally(state) {
  const node = $("tally");
  if (!node || !["on_air", "next", "off", "unknown"].includes(state)) return;
  if (node.dataset.state === state) return;
  node.dataset.state = state;
  setText(node.querySelector('[data-role="text"]'), t(`contribute.tally.${state}`));
  setText(node.querySelector('[data-role="detail"]'), state === "unknown" ? "" : t(`contribute.tally.${state}_detail`));
  document.title = state === "on_air" ? `● ${t("contribute.tally.on_air")} – ${baseTitle}` : baseTitle;
}

const baseTitle = document.title;

// ---------------------------------------------------------------- cues

const seenCues = new Set();

function showCue(cue) {
  if (!cue || typeof cue.text !== "string") return;
  const key = `${cue.sent_at}|${cue.text}`;
  if (seenCues.has(key)) return;
  seenCues.add(key);
  const box = $("cue-box");
  const text = $("cue");
  const time = $("cue-time");
  if (text.textContent) {
    const history = $("cue-history");
    history.prepend(el("li", {}, el("time", { datetime: time.dateTime, text: time.textContent }), " ", text.textContent));
    while (history.children.length > 5) history.lastElementChild.remove();
  }
  text.textContent = cue.text;
  const at = cue.sent_at || new Date(clock.now()).toISOString();
  time.dateTime = at;
  time.textContent = t("contribute.cue_at", { time: formatTime(at, SITE_ZONE, { seconds: true }) });
  box.dataset.empty = "false";
  $("cue-empty").hidden = true;
  // A silent flash: restart the animation even when cues come in quick succession.
  box.classList.remove("cue-box--flash");
  void box.offsetWidth;
  box.classList.add("cue-box--flash");
}

// ---------------------------------------------------------------- what the server receives

let feedStatus = { state: "unknown", at: 0 };

function showFeedStatus(status) {
  if (!status || (status.feed && status.feed !== FEED)) return;
  feedStatus = { ...status, at: Date.now() };
  renderFeedStatus();
}

function renderFeedStatus() {
  const node = $("feed-status");
  if (!node) return;
  let state = feedStatus.state === "live" ? "live" : feedStatus.state === "offline" ? "offline" : "unknown";
  let text;
  if (state !== "unknown" && Date.now() - feedStatus.at > STATUS_STALE_MS) {
    state = "unknown";
    text = t("contribute.feed.stale");
  } else if (state === "live") {
    const { width, height, fps } = feedStatus;
    text = width && height
      ? t("contribute.feed.live", { width, height, fps: formatNumber(Math.round(Number(fps) || 0)) })
      : t("contribute.feed.live_plain");
  } else {
    text = t(`contribute.feed.${state}`);
  }
  node.dataset.state = state;
  setText(node, text);
}

/** The server still receives a picture that is not ours: another device publishes. */
function someoneElsePublishes() {
  return !pc && feedStatus.state === "live" && Date.now() - feedStatus.at < 2000;
}

// ---------------------------------------------------------------- camera and microphone

const nodes = {
  preview: $("preview"),
  previewEmpty: $("preview-empty"),
  camera: $("camera-select"),
  mic: $("mic-select"),
  resolution: $("resolution-select"),
  publish: $("publish"),
  stop: $("stop"),
  mediaError: $("media-error"),
  mediaRetry: $("media-retry"),
  level: $("mic-level"),
  publishState: $("publish-state"),
  sendStats: $("send-stats"),
};

let stream = null;

function resolution() {
  return RESOLUTIONS[nodes.resolution.value] || RESOLUTIONS[720];
}

function constraints() {
  const { width, height } = resolution();
  const video = { width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: 30 } };
  const audio = {};
  if (nodes.camera.value) video.deviceId = { exact: nodes.camera.value };
  if (nodes.mic.value) audio.deviceId = { exact: nodes.mic.value };
  return { video, audio: Object.keys(audio).length ? audio : true };
}

function mediaMessage(error) {
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return t("contribute.media.denied");
    case "NotFoundError":
    case "OverconstrainedError":
      return t("contribute.media.not_found");
    case "NotReadableError":
    case "AbortError":
      return t("contribute.media.busy");
    default:
      return t("contribute.media.failed", { name: error?.name || "?" });
  }
}

function showMediaError(message) {
  showStatus(nodes.mediaError, message, "error");
  nodes.mediaRetry.hidden = !message;
}

/** Open (or reopen, after a choice changed) the camera and microphone. */
async function openMedia() {
  if (!navigator.mediaDevices?.getUserMedia) {
    showMediaError(window.isSecureContext === false ? t("contribute.media.insecure") : t("contribute.publish.unsupported"));
    return;
  }
  let next;
  try {
    next = await navigator.mediaDevices.getUserMedia(constraints());
  } catch (error) {
    // Phones often cannot open a second camera while the first is open.
    if (!stream || error?.name !== "NotReadableError") return showMediaError(mediaMessage(error));
    stopTracks(stream);
    try {
      next = await navigator.mediaDevices.getUserMedia(constraints());
    } catch (again) {
      return showMediaError(mediaMessage(again));
    }
  }
  const old = stream;
  stream = next;
  showMediaError("");
  nodes.preview.srcObject = stream;
  nodes.preview.play().catch(() => {});
  nodes.previewEmpty.hidden = true;
  await replaceTracks();
  if (old && old !== stream) stopTracks(old);
  await refreshDevices();
  meterSource(stream);
  updateButtons();
}

function stopTracks(s) {
  for (const track of s.getTracks()) track.stop();
}

function currentDevice(kind) {
  return stream?.getTracks().find((track) => track.kind === kind)?.getSettings?.().deviceId || "";
}

function fillDevices(select, devices, current, labelKey) {
  const chosen = current || select.value;
  select.replaceChildren(...devices.map((device, i) =>
    el("option", { value: device.deviceId, text: device.label || t(labelKey, { n: i + 1 }) })));
  if (chosen && devices.some((d) => d.deviceId === chosen)) select.value = chosen;
  select.disabled = devices.length === 0;
}

async function refreshDevices() {
  let devices = [];
  try {
    devices = await navigator.mediaDevices.enumerateDevices();
  } catch {
    return;
  }
  fillDevices(nodes.camera, devices.filter((d) => d.kind === "videoinput" && d.deviceId), currentDevice("video"), "contribute.camera_n");
  fillDevices(nodes.mic, devices.filter((d) => d.kind === "audioinput" && d.deviceId), currentDevice("audio"), "contribute.microphone_n");
}

// A microphone level bar, so that a silent microphone is seen before going live.
let audioContext = null;
let meterInput = null;
let analyser = null;

function meterSource(s) {
  const Context = window.AudioContext || window.webkitAudioContext;
  const track = s.getAudioTracks()[0];
  if (!Context || !track) return;
  try {
    audioContext ??= new Context();
    if (!analyser) {
      analyser = audioContext.createAnalyser();
      analyser.fftSize = 512;
      requestAnimationFrame(drawLevel);
    }
    meterInput?.disconnect();
    meterInput = audioContext.createMediaStreamSource(new MediaStream([track]));
    meterInput.connect(analyser);
  } catch {
    /* the meter is a help, not a need */
  }
}

const levelSamples = new Float32Array(512);
function drawLevel() {
  analyser.getFloatTimeDomainData(levelSamples);
  let sum = 0;
  for (const v of levelSamples) sum += v * v;
  const rms = Math.sqrt(sum / levelSamples.length);
  // -60 dBFS .. 0 dBFS over the bar's width.
  const db = rms > 0 ? 20 * Math.log10(rms) : -100;
  nodes.level.style.width = `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100)).toFixed(0)}%`;
  requestAnimationFrame(drawLevel);
}

// ---------------------------------------------------------------- publishing (WHIP)

let pc = null;
let sessionUrl = null;
let generation = 0;
let attempt = 0;
let retryTimer = null;
let wanted = false;
let unwatch = null;
let wakeLock = null;

function authHeaders() {
  return { Authorization: `Bearer ${TOKEN}` };
}

function setPublish(state, text) {
  nodes.publishState.dataset.state = state;
  setText(nodes.publishState, text);
  updateButtons();
}

function updateButtons() {
  nodes.publish.disabled = wanted || !stream;
  nodes.stop.disabled = !wanted;
  nodes.publish.setAttribute("aria-pressed", String(wanted));
}

/** Put H.264 first (the programme's codec, no transcoding); VP8 stays acceptable. */
function preferH264(transceiver) {
  if (typeof transceiver.setCodecPreferences !== "function" || !window.RTCRtpReceiver?.getCapabilities) return;
  try {
    const codecs = RTCRtpReceiver.getCapabilities("video")?.codecs || [];
    const rank = (codec) => {
      const mime = codec.mimeType.toLowerCase();
      if (mime !== "video/h264") return 2;
      return /packetization-mode=1/.test(codec.sdpFmtpLine || "") && /profile-level-id=42e0/.test(codec.sdpFmtpLine || "") ? 0 : 1;
    };
    if (codecs.some((c) => c.mimeType.toLowerCase() === "video/h264")) {
      transceiver.setCodecPreferences([...codecs].sort((a, b) => rank(a) - rank(b)));
    }
  } catch {
    /* the browser's own order then */
  }
}

async function limitBitrate(peer) {
  const sender = peer.getSenders().find((s) => s.track?.kind === "video");
  if (!sender?.getParameters) return;
  try {
    const params = sender.getParameters();
    if (!params.encodings?.length) return;
    params.encodings[0].maxBitrate = resolution().maxBitrate;
    await sender.setParameters(params);
  } catch {
    /* a ceiling only */
  }
}

async function replaceTracks() {
  if (!pc || !stream) return;
  for (const transceiver of pc.getTransceivers()) {
    const kind = transceiver.receiver?.track?.kind || transceiver.sender.track?.kind;
    const track = stream.getTracks().find((candidate) => candidate.kind === kind);
    if (track && transceiver.sender.track !== track) {
      try {
        await transceiver.sender.replaceTrack(track);
      } catch {
        /* renegotiation would be needed: the next reconnect takes the new track */
      }
    }
  }
  await limitBitrate(pc);
}

function publish() {
  if (!webrtcSupported()) return setPublish("error", t("contribute.publish.unsupported"));
  audioContext?.resume?.();
  wanted = true;
  attempt = 0;
  keepAwake();
  connect();
}

async function connect() {
  const gen = ++generation;
  clearTimeout(retryTimer);
  retryTimer = null;
  if (!stream) {
    wanted = false;
    return setPublish("error", t("contribute.publish.no_media"));
  }
  setPublish("connecting", attempt ? t("contribute.publish.reconnecting") : t("contribute.publish.connecting"));
  let peer;
  try {
    peer = new RTCPeerConnection({ iceServers: config.ice_servers || [], bundlePolicy: "max-bundle" });
  } catch (error) {
    wanted = false; // a configuration the browser refuses (ICE servers): retrying cannot help
    return setPublish("error", t("contribute.publish.refused", { message: error?.message || error?.name || "?" }));
  }
  pc = peer;
  for (const track of stream.getTracks()) {
    const transceiver = peer.addTransceiver(track, { direction: "sendonly", streams: [stream] });
    if (track.kind === "video") preferH264(transceiver);
  }
  unwatch = watchConnection(peer, {
    onState: (state) => gen === generation && onPeerState(state),
    onLost: () => gen === generation && connectionLost(),
  });
  try {
    await peer.setLocalDescription(await peer.createOffer());
    await waitForIceGathering(peer);
    if (gen !== generation) return;
    const result = await postOffer(`/whip/${encodeURIComponent(FEED)}`, peer.localDescription.sdp, authHeaders());
    if (gen !== generation) {
      endSession(result.location, authHeaders());
      return;
    }
    sessionUrl = result.location;
    await peer.setRemoteDescription({ type: "answer", sdp: result.answer });
    await limitBitrate(peer);
  } catch (error) {
    if (gen !== generation) return;
    teardown();
    if (error instanceof ApiError && FATAL.has(error.status)) {
      wanted = false;
      return setPublish("error", refusal(error));
    }
    retry();
  }
}

function refusal(error) {
  if (error.status === 401 || error.status === 403) return t("contribute.token_invalid");
  if (error.status === 404) return t("contribute.publish.unknown_feed");
  return t("contribute.publish.refused", { message: error.message });
}

function onPeerState(state) {
  if (state === "connected") {
    attempt = 0;
    setPublish("live", t("contribute.publish.live"));
  } else if (state === "disconnected") {
    setPublish("connecting", t("contribute.publish.unstable"));
  }
}

function connectionLost() {
  teardown();
  if (wanted) retry();
}

function retry() {
  const seconds = backoffSeconds(attempt);
  attempt += 1;
  setPublish("connecting", t("contribute.publish.retry_in", { seconds }));
  clearTimeout(retryTimer);
  retryTimer = setTimeout(() => {
    retryTimer = null;
    // A second publisher replaces the first: do not take the feed back from it.
    if (someoneElsePublishes()) {
      wanted = false;
      return setPublish("error", t("contribute.publish.replaced"));
    }
    connect();
  }, seconds * 1000);
}

function teardown({ keepalive = false } = {}) {
  generation += 1;
  unwatch?.();
  unwatch = null;
  if (sessionUrl) endSession(sessionUrl, authHeaders(), { keepalive });
  sessionUrl = null;
  try {
    pc?.close();
  } catch {
    /* already closed */
  }
  pc = null;
  nodes.sendStats.hidden = true;
}

function stop() {
  wanted = false;
  clearTimeout(retryTimer);
  retryTimer = null;
  teardown();
  wakeLock?.release?.().catch(() => {});
  wakeLock = null;
  setPublish("idle", t("contribute.publish.stopped"));
}

/** A phone's screen must not sleep while it sends the picture. */
async function keepAwake() {
  if (!wanted || wakeLock || !navigator.wakeLock?.request || document.visibilityState !== "visible") return;
  try {
    wakeLock = await navigator.wakeLock.request("screen");
    wakeLock.addEventListener("release", () => {
      wakeLock = null;
    });
  } catch {
    wakeLock = null;
  }
}

// What the browser sends, beside what the server says it receives.
let lastSent = null;
async function pollSendStats() {
  const peer = pc;
  if (!peer || (peer.connectionState || peer.iceConnectionState) !== "connected") {
    lastSent = null;
    return;
  }
  let report;
  try {
    report = await peer.getStats();
  } catch {
    return;
  }
  let out = null;
  const codecs = new Map();
  report.forEach((stat) => {
    if (stat.type === "outbound-rtp" && (stat.kind || stat.mediaType) === "video") out = stat;
    if (stat.type === "codec") codecs.set(stat.id, stat.mimeType);
  });
  if (!out || peer !== pc) return;
  const now = performance.now();
  const kbps = lastSent ? ((out.bytesSent - lastSent.bytes) * 8) / (now - lastSent.at) : 0;
  lastSent = { bytes: out.bytesSent, at: now };
  if (!out.frameWidth) return;
  nodes.sendStats.hidden = false;
  setText(nodes.sendStats, t("contribute.send_stats", {
    codec: (codecs.get(out.codecId) || "").replace(/^video\//i, ""),
    width: out.frameWidth,
    height: out.frameHeight,
    fps: formatNumber(Math.round(out.framesPerSecond || 0)),
    kbps: formatNumber(Math.round(kbps)),
  }));
}

// ---------------------------------------------------------------- the control room's link

let revoked = false;

function connectControlRoom() {
  if (typeof window.io !== "function") {
    showStatus($("socket-status"), t("live.unavailable"), "error");
    return;
  }
  const status = $("socket-status");
  const socket = window.io("/contribute", { auth: { token: TOKEN, feed: FEED }, transports: ["websocket", "polling"], tryAllTransports: true });
  socket.on("connect", () => showStatus(status, ""));
  socket.on("disconnect", (reason) => {
    if (!revoked && reason !== "io client disconnect") showStatus(status, t("contribute.socket_lost"), "error");
  });
  socket.on("connect_error", () => {
    // Refused by the server (not a network failure): the client will not retry.
    showStatus(status, socket.active ? t("contribute.socket_lost") : t("contribute.socket_refused"), "error");
  });
  socket.on("revoked", () => {
    // The token was rotated: the server ends the link (and any publishing) for good.
    revoked = true;
    showStatus(status, t("contribute.revoked"), "error");
  });
  socket.on("programme", renderProgramme);
  socket.on("tally", (tally) => {
    if (!tally || (tally.feed && tally.feed !== FEED)) return;
    tallyPushed = true;
    showTally(tally.state);
  });
  socket.on("cue", showCue);
  socket.on("feed_status", showFeedStatus);
}

// ---------------------------------------------------------------- start

if (config.programme) renderProgramme(config.programme);
clock.tick((now) => {
  tickClocks(now);
  renderProgrammeNow();
}, 250);

if (config.token_valid) {
  nodes.publish.addEventListener("click", publish);
  nodes.stop.addEventListener("click", stop);
  nodes.mediaRetry.addEventListener("click", openMedia);
  for (const select of [nodes.camera, nodes.mic, nodes.resolution]) select.addEventListener("change", openMedia);
  navigator.mediaDevices?.addEventListener?.("devicechange", refreshDevices);
  window.addEventListener("pagehide", () => teardown({ keepalive: true }));
  window.addEventListener("pageshow", (event) => event.persisted && wanted && connect());
  window.addEventListener("online", () => retryTimer && connect());
  document.addEventListener("visibilitychange", keepAwake);
  // Browsers start an AudioContext suspended until the page is used: the level
  // meter comes alive at the first tap or key.
  for (const type of ["pointerdown", "keydown"]) document.addEventListener(type, () => audioContext?.resume?.(), { once: true });
  setInterval(() => {
    renderFeedStatus();
    pollSendStats();
  }, 1000);
  connectControlRoom();
  openMedia();
}

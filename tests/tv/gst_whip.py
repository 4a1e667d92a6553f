"""A GStreamer 1.22 WHIP publisher, as a remote site's technician would run one.

Run by Debian's own Python (``/usr/bin/python3``, with python3-gi), not the
project's: GStreamer's bindings come from Debian. GStreamer 1.22 as packaged by
Debian has ``webrtcbin`` but not ``whipsink`` (gst-plugins-rs), so this does
what ``whipsink`` does: webrtcbin makes the offer, ICE gathering completes,
the offer goes to the WHIP endpoint with the bearer token, the answer comes
back. webrtcbin signs DTLS with an RSA certificate, as whipsink does.

    /usr/bin/python3 tests/tv/gst_whip.py URL TOKEN SECONDS [h264|vp8] [sendrecv]

Prints one JSON line: the HTTP status, the session's Location, what the offer
said (media, setup, candidates), the connection state reached and the status
of the closing DELETE; exits 0 if it published.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

PIPELINES = {
    # A red wall (videotestsrc's pattern 4) and a tone, as a camera and a microphone.
    "h264": ("videotestsrc is-live=true pattern=red ! video/x-raw,width=320,height=180,"
             "framerate=30/1 ! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast "
             "key-int-max=30 ! rtph264pay config-interval=-1 aggregate-mode=zero-latency ! "
             "application/x-rtp,media=video,encoding-name=H264,payload=102 ! webrtc."),
    "vp8": ("videotestsrc is-live=true pattern=red ! video/x-raw,width=320,height=180,"
            "framerate=30/1 ! videoconvert ! vp8enc deadline=1 keyframe-max-dist=30 ! "
            "rtpvp8pay ! application/x-rtp,media=video,encoding-name=VP8,payload=96 ! webrtc."),
}
AUDIO = ("audiotestsrc is-live=true wave=sine freq=400 ! audioconvert ! audioresample ! "
         "opusenc ! rtpopuspay ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111 "
         "! webrtc.")


def main() -> int:
    url, token, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    codec = sys.argv[4] if len(sys.argv) > 4 else "h264"
    sendonly = "sendrecv" not in sys.argv[5:]
    Gst.init(None)
    pipeline = Gst.parse_launch(
        f"webrtcbin name=webrtc bundle-policy=max-bundle {PIPELINES[codec]} {AUDIO}")
    webrtc = pipeline.get_by_name("webrtc")
    # Like the tests' aiortc peers, offer 127.0.0.1 only (libnice leaves loopback
    # out unless it is given explicitly).
    loopback = Nice.Address.new()
    loopback.set_from_string("127.0.0.1")
    ice = webrtc.get_property("ice-agent")
    # PyGObject drops one reference too many to the ICE object read from the
    # property (GStreamer 1.22: "ref_count > 0" criticals, then a crash): keep one.
    Gst.Object.ref(ice)
    ice.get_property("agent").add_local_address(loopback)
    loop = GLib.MainLoop()
    result: dict[str, object] = {"status": None}

    def finish(ok: bool) -> None:
        result["ok"] = ok
        loop.quit()

    def post(offer_sdp: str) -> None:
        request = urllib.request.Request(url, data=offer_sdp.encode(), method="POST", headers={
            "Content-Type": "application/sdp", "Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                result["status"] = response.status
                result["location"] = response.headers.get("Location")
                answer = response.read().decode()
        except urllib.error.HTTPError as e:
            result["status"], result["error"] = e.code, e.read().decode()[:300]
            GLib.idle_add(finish, False)
            return
        _, sdp = GstSdp.SDPMessage.new_from_text(answer)
        description = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
        webrtc.emit("set-remote-description", description, Gst.Promise.new())

    def gathered(element: Gst.Element, _pspec: object) -> None:
        complete = GstWebRTC.WebRTCICEGatheringState.COMPLETE
        if element.get_property("ice-gathering-state") == complete:
            offer = element.get_property("local-description").sdp.as_text()
            result["offer"] = [line for line in offer.splitlines() if line.startswith(
                ("m=", "a=rtpmap", "a=setup", "a=sendonly", "a=sendrecv", "a=candidate"))]
            # The HTTP exchange off GStreamer's streaming thread.
            threading.Thread(target=post, args=(offer,), daemon=True).start()

    def offer_created(promise: Gst.Promise, _element: Gst.Element, _data: object) -> None:
        promise.wait()
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            result["error"] = f"no offer: {reply.to_string() if reply else None}"
            GLib.idle_add(finish, False)
            return
        webrtc.emit("set-local-description", offer, Gst.Promise.new())

    negotiated = []

    def negotiate(element: Gst.Element) -> None:
        if negotiated:  # once, with every stream in the offer
            return
        negotiated.append(True)
        if sendonly:  # what whipsink does; webrtcbin's own default is sendrecv
            for i in range(2):
                transceiver = element.emit("get-transceiver", i)
                if transceiver is not None:
                    transceiver.set_property(
                        "direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        element.emit("create-offer", None,
                     Gst.Promise.new_with_change_func(offer_created, element, None))

    def connection(element: Gst.Element, _pspec: object) -> None:
        state = element.get_property("connection-state")
        result["connection_state"] = state.value_nick
        if state == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            GLib.idle_add(finish, False)

    webrtc.connect("on-negotiation-needed", negotiate)
    webrtc.connect("notify::ice-gathering-state", gathered)
    webrtc.connect("notify::connection-state", connection)
    pipeline.set_state(Gst.State.PLAYING)

    def done() -> bool:
        result["ok"] = result.get("connection_state") == "connected"
        loop.quit()
        return False

    GLib.timeout_add(int(seconds * 1000), done)
    loop.run()
    pipeline.set_state(Gst.State.NULL)
    if result.get("location"):  # as whipsink does when it stops: end the session
        end = urllib.request.Request(urllib.parse.urljoin(url, str(result["location"])),
                                     method="DELETE",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(end, timeout=10) as response:
            result["delete_status"] = response.status
    print(json.dumps(result), flush=True)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())

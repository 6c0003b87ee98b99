#!/usr/bin/env python3
"""A Chorus client on aiortc, a second WebRTC stack, for interop measurements.

It speaks the documented protocol (docs/PROTOCOL.md) and nothing else: WebSocket to
/ws with a token, `join_room`, `join_call`, then answers every `offer` of the server
(the server always offers: microphone m-line plus the sendonly slot m-lines).

Roles:
  listener  receives; every RTP packet reaching any receiver is recorded (arrival
            time, SSRC, sequence number, RTP timestamp) by wrapping aiortc's
            RTCRtpReceiver._handle_rtp_packet, before the jitter buffer.
  speaker   sends real Opus: aiortc encodes a generated 400 Hz sine. It must be
            allowed to publish (the room owner joins as an unmuted moderator).

Measured for every join (times in ms from the WebSocket being open): joined, offer
received, answer sent, ICE connected, DTLS connected, first audio packet; and the
ICE exchange as seen at the client's own socket: every STUN message sent and
received (retransmissions, error responses, binding requests the server sent).

`--consent-interval S` makes aioice send its RFC 7675 consent checks every S seconds
exactly (aioice randomises 0.8-1.2 x 5 s by default). `--joins N` repeats the join
N times, one after the other, each with a fresh socket and peer connection, and
leaves after the first audio packet (join timing). Host candidates are the address
of `--host-address` (default 127.0.0.1: aioice never gathers loopback on its own).

Output: one JSON object on stdout (logs go to stderr). Exit status 0 when every
step finished, 1 with an "error" field in the JSON otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import logging
import math
import statistics
import sys
import time
import types
from array import array
from typing import Any

import aioice.ice
import aioice.stun
import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from websockets.asyncio.client import connect as ws_connect

log = logging.getLogger("aiortc_client")

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms
TONE_HZ = 400  # 120 samples a period: one 20 ms frame holds exactly 8 periods
GAP_MS = 100.0


def now_ms() -> float:
    return time.monotonic() * 1000.0


class Recorder:
    """What the wire showed, for the current join (the hooks below write here)."""

    def __init__(self) -> None:
        self.t0 = now_ms()
        self.stun: list[dict[str, Any]] = []
        self.rtp: list[tuple[float, int, int, int]] = []
        self.first_rtp = asyncio.Event()

    def rel(self) -> float:
        return now_ms() - self.t0


REC = Recorder()


def _stun_event(direction: str, message: aioice.stun.Message) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "t": round(REC.rel(), 2),
        "dir": direction,
        "class": message.message_class.name.lower(),
        "tx": message.transaction_id.hex(),
        "use_candidate": "USE-CANDIDATE" in message.attributes,
    }
    if "ERROR-CODE" in message.attributes:
        code, reason = message.attributes["ERROR-CODE"]
        ev["error"] = f"{code} {reason}"
    return ev


def install_hooks(consent_interval: float | None, host_address: str) -> None:
    """Monkeypatches aioice and aiortc at class level to observe and steer them."""
    orig_send = aioice.ice.StunProtocol.send_stun

    def send_stun(self: Any, message: aioice.stun.Message, addr: Any) -> None:
        REC.stun.append(_stun_event("out", message))
        orig_send(self, message, addr)

    orig_recv = aioice.ice.StunProtocol.datagram_received

    def datagram_received(self: Any, data: bytes, addr: Any) -> None:
        # STUN's first two bits are zero; RTP/RTCP (first byte 128-191) and DTLS
        # (20-63) are not parsed here.
        if data and data[0] < 2:
            try:
                REC.stun.append(_stun_event("in", aioice.stun.parse_message(data)))
            except ValueError:
                pass
        orig_recv(self, data, addr)

    aioice.ice.StunProtocol.send_stun = send_stun
    aioice.ice.StunProtocol.datagram_received = datagram_received

    orig_rtp = RTCRtpReceiver._handle_rtp_packet

    async def handle_rtp(self: Any, packet: Any, arrival_time_ms: int) -> None:
        REC.rtp.append((now_ms(), packet.ssrc, packet.sequence_number, packet.timestamp))
        REC.first_rtp.set()
        await orig_rtp(self, packet, arrival_time_ms)

    RTCRtpReceiver._handle_rtp_packet = handle_rtp

    if consent_interval is not None:
        # query_consent sleeps CONSENT_INTERVAL * (0.8 + 0.4 * random.random()):
        # with random() fixed at 0.5 that is exactly the interval.
        aioice.ice.CONSENT_INTERVAL = consent_interval
        aioice.ice.random = types.SimpleNamespace(random=lambda: 0.5)

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [host_address]


class ToneTrack(MediaStreamTrack):
    """A 400 Hz sine at half scale, paced in real time, 20 ms frames."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        period = SAMPLE_RATE // TONE_HZ
        one = [
            int(0.5 * 32767 * math.sin(2 * math.pi * i / period)) for i in range(period)
        ]
        self._pcm = array("h", one * (FRAME_SAMPLES // period)).tobytes()
        self._pts = 0
        self._start: float | None = None
        self.frames = 0

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + self._pts / SAMPLE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(self._pcm)
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._pts += FRAME_SAMPLES
        self.frames += 1
        return frame


class StepError(Exception):
    pass


class Call:
    """One join: a WebSocket session and its peer connection."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.ws: Any = None
        self.tone = ToneTrack() if args.role == "speaker" else None
        self.marks: dict[str, float] = {}
        self.errors: list[dict[str, Any]] = []
        self.offers = 0
        self.events: dict[str, asyncio.Event] = {
            k: asyncio.Event() for k in ("joined", "answered", "ice", "connected")
        }
        self.drains: list[asyncio.Task[None]] = []
        self.reader: asyncio.Task[None] | None = None
        self.failed: str | None = None
        self.failed_event = asyncio.Event()

        @self.pc.on("iceconnectionstatechange")
        def _ice() -> None:
            state = self.pc.iceConnectionState
            if state in ("connected", "completed"):
                self.mark("ice_connected")
                self.events["ice"].set()
            elif state == "failed":
                self.fail("ICE failed")

        @self.pc.on("connectionstatechange")
        def _conn() -> None:
            state = self.pc.connectionState
            if state == "connected":
                self.mark("dtls_connected")
                self.events["connected"].set()
            elif state == "failed":
                self.fail("peer connection failed")

        @self.pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            # Consume decoded frames so aiortc's queues stay bounded.
            self.drains.append(asyncio.create_task(self._drain(track)))

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, round(REC.rel(), 2))

    def fail(self, why: str) -> None:
        if self.failed is None:
            self.failed = why
        self.failed_event.set()
        for ev in self.events.values():
            ev.set()

    async def _drain(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
        except (MediaStreamError, asyncio.CancelledError):
            pass

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(msg))

    async def wait(self, name: str, what: str) -> None:
        try:
            await asyncio.wait_for(self.events[name].wait(), self.args.step_timeout)
        except asyncio.TimeoutError:
            raise StepError(f"timed out after {self.args.step_timeout} s waiting for {what}")
        if self.failed is not None:
            raise StepError(f"{self.failed} (waiting for {what})")

    async def open(self) -> None:
        sep = "&" if "?" in self.args.ws else "?"
        url = f"{self.args.ws}{sep}token={self.args.token}"
        REC.t0 = now_ms()
        REC.stun.clear()
        self.ws = await asyncio.wait_for(ws_connect(url), self.args.step_timeout)
        # Every time of this join counts from here: the WebSocket is open.
        REC.t0 = now_ms()
        REC.stun.clear()
        REC.rtp.clear()
        REC.first_rtp.clear()
        self.reader = asyncio.create_task(self._read())
        await self.send({"type": "join_room", "roomId": self.args.room})
        await self.wait("joined", "joined")
        await self.send({"type": "join_call"})
        await self.wait("answered", "an offer to answer")

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "joined":
                    self.mark("joined")
                    self.events["joined"].set()
                elif kind == "offer":
                    await self._answer(msg)
                elif kind == "call_state" and msg.get("connected"):
                    self.mark("call_state_connected")
                elif kind == "error":
                    self.errors.append(msg)
                    if msg.get("fatal"):
                        self.fail(f"server error {msg.get('code')}: {msg.get('message')}")
            self.fail("the server closed the WebSocket")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - reported, never swallowed
            self.fail(f"signaling: {e!r}")

    async def _answer(self, msg: dict[str, Any]) -> None:
        self.offers += 1
        self.mark("offer")
        await self.pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
        if self.tone is not None:
            for t in self.pc.getTransceivers():
                if t.mid == msg["publishMid"]:
                    t.sender.replaceTrack(self.tone)
                    t.direction = "sendonly"
        # As a browser does: setLocalDescription starts ICE, then the answer goes out.
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.send({"type": "answer", "sdp": self.pc.localDescription.sdp})
        self.mark("answer_sent")
        self.events["answered"].set()

    async def first_audio(self) -> None:
        first = asyncio.ensure_future(REC.first_rtp.wait())
        failed = asyncio.ensure_future(self.failed_event.wait())
        await asyncio.wait(
            {first, failed}, timeout=self.args.step_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        first.cancel()
        failed.cancel()
        if not REC.rtp:
            raise StepError(
                f"no audio packet within {self.args.step_timeout} s "
                f"(ICE state {self.pc.iceConnectionState}, "
                f"connection {self.pc.connectionState}; {self.failed or 'no error'})"
            )
        self.marks["first_audio"] = round(REC.rtp[0][0] - REC.t0, 2)

    async def close(self) -> None:
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.send({"type": "leave_room"}), 2)
                await asyncio.wait_for(self.ws.close(), 2)
            except Exception:  # noqa: BLE001 - leaving is best effort
                pass
        if self.reader is not None:
            self.reader.cancel()
        await asyncio.wait_for(self.pc.close(), 5)
        for d in self.drains:
            d.cancel()

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"times_ms": dict(self.marks), "offers": self.offers}
        out["stun"] = stun_summary(REC.stun, self.marks.get("first_audio"))
        if self.errors:
            out["server_errors"] = self.errors
        return out


def stun_summary(events: list[dict[str, Any]], until: float | None) -> dict[str, Any]:
    """The ICE handshake (events up to the first audio packet) as the client saw it."""
    join = [e for e in events if until is None or e["t"] <= until]
    sent = [e for e in join if e["dir"] == "out" and e["class"] == "request"]
    tx_sent: dict[str, int] = {}
    for e in sent:
        tx_sent[e["tx"]] = tx_sent.get(e["tx"], 0) + 1
    answers: dict[str, dict[str, Any]] = {}
    for e in join:
        if e["dir"] == "in" and e["class"] in ("response", "error"):
            answers.setdefault(e["tx"], e)
    first_nominating = next((e for e in sent if e["use_candidate"]), None)
    first_nom_answer = None
    if first_nominating is not None:
        # The answer to the first transmission: one that came before any
        # retransmission of the same request.
        tx = first_nominating["tx"]
        resend = next(
            (e["t"] for e in sent if e["tx"] == tx and e["t"] > first_nominating["t"]), None
        )
        a = answers.get(tx)
        if a is None or (resend is not None and a["t"] >= resend):
            first_nom_answer = "none"
        else:
            first_nom_answer = "success" if a["class"] == "response" else a.get("error", "error")
    return {
        "checks_sent": len(tx_sent),
        "retransmissions": sum(n - 1 for n in tx_sent.values()),
        "unanswered_checks": sum(1 for tx in tx_sent if tx not in answers),
        "error_responses": [
            e.get("error", "?") for e in join if e["dir"] == "in" and e["class"] == "error"
        ],
        "requests_from_server": sum(
            1 for e in join if e["dir"] == "in" and e["class"] == "request"
        ),
        "first_nominating_check_answer": first_nom_answer,
        "events": join,
    }


def packet_summary(rtp: list[tuple[float, int, int, int]]) -> dict[str, Any]:
    """Continuity of what arrived, per SSRC: by RTP timestamp, sequence and arrival."""
    per: dict[int, list[tuple[float, int, int]]] = {}
    for t, ssrc, seq, ts in rtp:
        per.setdefault(ssrc, []).append((t, seq, ts))
    streams: dict[str, Any] = {}
    for ssrc, pkts in per.items():
        lost = 0
        gaps = {"rtp_ts": 0, "seq": 0, "arrival": 0}
        largest = {"rtp_ts": 0.0, "seq": 0.0, "arrival": 0.0}
        worst: list[dict[str, Any]] = []
        for (t0, s0, ts0), (t1, s1, ts1) in zip(pkts, pkts[1:]):
            dseq = (s1 - s0) & 0xFFFF
            dts = (ts1 - ts0) & 0xFFFFFFFF
            if dseq >= 0x8000:  # reordered or duplicate: not a gap
                continue
            lost += max(dseq - 1, 0)
            gap = {
                "rtp_ts": dts * 1000.0 / SAMPLE_RATE if dts < 0x80000000 else 0.0,
                # sequence numbers count 20 ms packets
                "seq": dseq * 1000.0 * FRAME_SAMPLES / SAMPLE_RATE,
                "arrival": t1 - t0,
            }
            for k, v in gap.items():
                largest[k] = max(largest[k], v)
                if v > GAP_MS:
                    gaps[k] += 1
            if max(gap.values()) > GAP_MS and len(worst) < 20:
                worst.append({"at_ms": round(t0 - REC.t0, 1), **{k: round(v, 1) for k, v in gap.items()}})
        streams[str(ssrc)] = {
            "packets": len(pkts),
            "lost": lost,
            "duration_ms": round(pkts[-1][0] - pkts[0][0], 1),
            "largest_gap_ms": {k: round(v, 1) for k, v in largest.items()},
            "gaps_over_100ms": gaps,
            "gaps": worst,
        }
    return {
        "total_packets": len(rtp),
        "streams": streams,
        "largest_gap_ms": {
            k: max((s["largest_gap_ms"][k] for s in streams.values()), default=0.0)
            for k in ("rtp_ts", "seq", "arrival")
        },
        "gaps_over_100ms": {
            k: sum(s["gaps_over_100ms"][k] for s in streams.values())
            for k in ("rtp_ts", "seq", "arrival")
        },
    }


def percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    s = sorted(xs)

    def pct(p: float) -> float:
        return round(s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))], 1)

    return {
        "n": len(s),
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "max": round(s[-1], 1),
        "mean": round(statistics.fmean(s), 1),
    }


async def run_call(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """One join that stays for --duration seconds after its first audio packet."""
    call = Call(args)
    try:
        await call.open()
        if args.role == "listener":
            await call.first_audio()
        else:
            await call.wait("connected", "the DTLS connection")
        await asyncio.sleep(args.duration)
        if call.failed is not None:
            raise StepError(call.failed)
    finally:
        out["joins"] = [call.report()]
        if args.role == "listener":
            out["received"] = packet_summary(REC.rtp)
            ice = call.marks.get("ice_connected")
            out["consent_checks_ms"] = [
                e["t"]
                for e in REC.stun
                if e["dir"] == "out" and e["class"] == "request" and ice is not None and e["t"] > ice
            ]
        else:
            out["frames_sent"] = call.tone.frames if call.tone else 0
        await call.close()


async def run_joins(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """--joins N: N sequential joins, each left after its first audio packet."""
    out["joins"] = []
    for _ in range(args.joins):
        call = Call(args)
        try:
            await call.open()
            await call.first_audio()
        finally:
            out["joins"].append(call.report())
            await call.close()
    firsts = [j["times_ms"]["first_audio"] for j in out["joins"] if "first_audio" in j["times_ms"]]
    out["join_ms"] = percentiles(firsts)


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ws", required=True, help="ws://host:port/ws")
    p.add_argument("--token", required=True, help="access token (sent as ?token=)")
    p.add_argument("--room", required=True)
    p.add_argument("--role", choices=("listener", "speaker"), default="listener")
    p.add_argument("--duration", type=float, default=5.0, help="seconds to stay after the first audio")
    p.add_argument("--joins", type=int, default=0, help="N sequential timed joins (listener)")
    p.add_argument("--consent-interval", type=float, default=None, help="fixed ICE consent interval, s")
    p.add_argument("--host-address", default="127.0.0.1", help="the client's host candidate address")
    p.add_argument("--step-timeout", type=float, default=15.0, help="bound on each step, s")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    install_hooks(args.consent_interval, args.host_address)
    out: dict[str, Any] = {
        "role": args.role,
        "consent_interval_s": args.consent_interval,
    }
    rc = 0
    try:
        if args.joins > 0:
            await run_joins(args, out)
        else:
            await run_call(args, out)
    except (StepError, OSError, asyncio.TimeoutError) as e:
        out["error"] = str(e) or repr(e)
        rc = 1
    print(json.dumps(out))
    return rc


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

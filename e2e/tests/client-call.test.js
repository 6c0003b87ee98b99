// The client's call logic (web/js/call.js) against the SFU's negotiation
// contract, with no server: a second RTCPeerConnection in the same page plays
// the SFU's part (it offers one microphone m-line plus three sendonly slot
// m-lines, as media/ does). Shows that the client answers every offer, plays
// slot audio, keeps the microphone off while it may not publish, attaches it on
// a promotion renegotiation, and survives an ICE restart.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { launchUser } from '../lib/browser.js';
import { serveWeb } from '../lib/static.js';
import { waitFor } from '../lib/flows.js';

let web;
let user;
let page;

before(async () => {
  web = await serveWeb();
  user = await launchUser();
  page = user.context.pages()[0] || (await user.context.newPage());
  await page.goto(`${web.base}/`);
  await page.evaluate(async () => {
    const { Call } = await import('/js/call.js');
    const host = document.createElement('div');
    document.body.append(host);

    // The emulated SFU: its slots carry the fake capture device's audio.
    const source = await navigator.mediaDevices.getUserMedia({ audio: true });
    const sfu = new RTCPeerConnection();
    const mic = sfu.addTransceiver('audio', { direction: 'inactive' });
    const slots = [0, 1, 2].map(() => sfu.addTransceiver(source.getAudioTracks()[0].clone(), { direction: 'sendonly' }));
    const sent = [];
    const call = new Call({ send: (m) => sent.push(m), audioHost: host, hooks: {} });

    const gathered = () => new Promise((r) => {
      if (sfu.iceGatheringState === 'complete') r();
      else sfu.addEventListener('icegatheringstatechange', () => sfu.iceGatheringState === 'complete' && r());
    });
    /** One offer/answer round, as signaling would carry it. */
    window.negotiate = async ({ canPublish, iceRestart = false }) => {
      mic.direction = canPublish ? 'recvonly' : 'inactive';
      const before = sent.length;
      await sfu.setLocalDescription(await sfu.createOffer({ iceRestart }));
      await gathered();
      await call.handleOffer({ sdp: sfu.localDescription.sdp, publishMid: mic.mid, slotMids: slots.map((s) => s.mid) }, canPublish);
      const answer = sent[before];
      if (!answer || answer.type !== 'answer') throw new Error(`no answer sent (${JSON.stringify(sent.slice(before))})`);
      await sfu.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
      return answer.sdp;
    };
    window.probe = async () => {
      let inPackets = 0;
      let energy = 0;
      let sfuIn = 0;
      (await call.pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') {
          inPackets += s.packetsReceived || 0;
          energy += s.totalAudioEnergy || 0;
        }
      });
      (await sfu.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') sfuIn += s.packetsReceived || 0;
      });
      return {
        inPackets,
        energy,
        sfuIn,
        state: call.pc.connectionState,
        audios: host.querySelectorAll('audio').length,
        playing: [...host.querySelectorAll('audio')].filter((a) => !a.paused).length,
        micLive: !!call.mic && call.mic.getAudioTracks().some((t) => t.readyState === 'live' && t.enabled),
      };
    };
    window.testCall = call;
  });
});

after(async () => {
  await user?.close();
  await web?.close();
});

const rising = async (key, min, what) => {
  const a = await page.evaluate(() => window.probe());
  return waitFor(async () => {
    const b = await page.evaluate(() => window.probe());
    return b[key] - a[key] >= min ? b : null;
  }, { what, timeout: 20000 });
};

test('a listener answers the offer with the mic m-line inactive and hears every slot', async () => {
  const sdp = await page.evaluate(() => window.negotiate({ canPublish: false }));
  const sections = sdp.split(/\r\nm=/).slice(1);
  assert.equal(sections.length, 4, 'one mic m-line and three slots');
  assert.match(sections[0], /a=inactive/);
  for (const s of sections.slice(1)) assert.match(s, /a=recvonly/);
  await waitFor(async () => (await page.evaluate(() => window.probe())).state === 'connected', { what: 'connection' });
  const now = await rising('inPackets', 50, 'slot packets');
  assert.equal(now.audios, 3, 'one <audio> per slot');
  assert.ok(now.playing >= 1, 'slot audio is playing');
  assert.equal(now.micLive, false, 'no microphone while listening');
  await rising('energy', 0.0001, 'decoded audio energy');
});

test('a promotion renegotiates: the mic is attached and the SFU receives it', async () => {
  const sdp = await page.evaluate(() => window.negotiate({ canPublish: true }));
  assert.match(sdp.split(/\r\nm=/)[1], /a=sendonly/);
  const now = await rising('sfuIn', 25, 'the SFU to receive the promoted mic');
  assert.equal(now.micLive, true);
});

test('mute disables the mic track; a demotion releases the microphone', async () => {
  await page.evaluate(() => window.testCall.setMuted(true));
  assert.equal((await page.evaluate(() => window.probe())).micLive, false);
  await page.evaluate(() => window.testCall.setMuted(false));
  const sdp = await page.evaluate(() => window.negotiate({ canPublish: false }));
  assert.match(sdp.split(/\r\nm=/)[1], /a=inactive/);
  assert.equal((await page.evaluate(() => window.probe())).micLive, false);
});

test('an ICE restart offer is answered with new credentials and audio continues', async () => {
  const before = await page.evaluate(() => window.testCall.pc.localDescription.sdp.match(/a=ice-ufrag:(\S+)/)[1]);
  const sdp = await page.evaluate(() => window.negotiate({ canPublish: false, iceRestart: true }));
  const after = sdp.match(/a=ice-ufrag:(\S+)/)[1];
  assert.notEqual(after, before);
  await rising('inPackets', 50, 'audio after the ICE restart');
});

test('with the microphone blocked, a promotion still answers (mic inactive) and says why', async () => {
  const denied = await launchUser({ denyMic: true });
  try {
    const p = denied.context.pages()[0] || (await denied.context.newPage());
    await p.goto(`${web.base}/`);
    const result = await p.evaluate(async () => {
      const { Call } = await import('/js/call.js');
      const sfu = new RTCPeerConnection();
      const mic = sfu.addTransceiver('audio', { direction: 'recvonly' });
      const slot = sfu.addTransceiver('audio', { direction: 'sendonly' });
      const sent = [];
      const micErrors = [];
      const call = new Call({ send: (m) => sent.push(m), hooks: { onMicError: (e) => micErrors.push({ kind: e.kind, message: e.message }) } });
      await sfu.setLocalDescription(await sfu.createOffer());
      await call.handleOffer({ sdp: sfu.localDescription.sdp, publishMid: mic.mid, slotMids: [slot.mid] }, true);
      call.close();
      sfu.close();
      return { sent, micErrors };
    });
    assert.equal(result.sent.length, 1);
    assert.equal(result.sent[0].type, 'answer');
    assert.match(result.sent[0].sdp.split(/\r\nm=/)[1], /a=inactive/);
    assert.equal(result.micErrors.length, 1);
    assert.equal(result.micErrors[0].kind, 'denied');
    assert.match(result.micErrors[0].message, /Microphone access is blocked/);
  } finally {
    await denied.close();
  }
});

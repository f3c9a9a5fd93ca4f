// The web client in a real browser against a real mesh-server.
// Every wait is on a condition (locators, waitForFunction), never a sleep.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  buildServer,
  startServer,
  launchBrowser,
  newPage,
  uniqueName,
  signUp,
  signIn,
  createRoom,
  openRoom,
  send,
  messageTexts,
  screenshot,
  waitConnected,
  SCREENSHOTS,
  PASSWORD,
} from './harness.js';

let server;
let browser;
const pages = [];

async function page(opts) {
  const p = await newPage(browser, server, opts);
  pages.push(p);
  return p;
}

/** Two signed-up users in one public room, both looking at it. */
async function twoInARoom(roomBase = 'room') {
  const alice = await page();
  const bob = await page();
  const aliceName = uniqueName('alice');
  const bobName = uniqueName('bob');
  await signUp(alice, aliceName);
  await signUp(bob, bobName);
  const room = uniqueName(roomBase);
  const roomId = await createRoom(alice, room);
  await bob.reload();
  await waitConnected(bob);
  await openRoom(bob, room);
  await alice.locator('#member-list .member', { hasText: bobName }).waitFor();
  return { alice, bob, aliceName, bobName, room, roomId };
}

describe('mesh web client', () => {
  before(async () => {
    buildServer();
    server = await startServer();
    browser = await launchBrowser();
    console.log(`screenshots in ${SCREENSHOTS}`);
  });

  after(async () => {
    for (const p of pages) assert.deepEqual(p.errors, [], 'no uncaught page errors');
    await browser?.close();
    await server?.stop();
    server?.cleanup();
  });

  it('is served by mesh-server with its content types and a strict CSP', async () => {
    const index = await fetch(`${server.url}/`);
    assert.equal(index.status, 200);
    assert.match(index.headers.get('content-type'), /^text\/html/);
    const csp = index.headers.get('content-security-policy');
    for (const part of [
      "default-src 'self'",
      'connect-src \'self\' ws: wss:',
      'media-src \'self\' blob:',
      'img-src \'self\' data: blob:',
    ]) {
      assert.ok(csp.includes(part), `CSP has ${part}: ${csp}`);
    }
    assert.ok(!csp.includes('unsafe-inline'));
    const js = await fetch(`${server.url}/app.js`);
    assert.match(js.headers.get('content-type'), /^text\/javascript/);
    const css = await fetch(`${server.url}/style.css`);
    assert.match(css.headers.get('content-type'), /^text\/css/);
    const missing = await fetch(`${server.url}/nope.js`);
    assert.equal(missing.status, 404);
  });

  it('signs up and in with clear errors, keeps the session across reloads, signs out', async () => {
    const p = await page();
    await p.locator('#auth-form').waitFor();
    await screenshot(p, 'login');
    const name = uniqueName('carol');
    await signUp(p, name);
    await p.reload();
    await waitConnected(p); // the token in localStorage survived the reload
    assert.equal(await p.textContent('#me-name'), name);
    await p.click('#signout');
    await p.locator('#auth-form').waitFor();
    assert.equal(await p.evaluate(() => localStorage.getItem('mesh.token')), null);

    // Name taken.
    await p.click('#tab-signup');
    await p.fill('#auth-username', name.toUpperCase());
    await p.fill('#auth-password', PASSWORD);
    await p.click('#auth-submit');
    await p.locator('#auth-error', { hasText: 'That username is taken' }).waitFor();
    // Wrong password.
    await p.click('#tab-signin');
    await p.fill('#auth-username', name);
    await p.fill('#auth-password', 'not the password');
    await p.click('#auth-submit');
    await p.locator('#auth-error', { hasText: 'Wrong username or password' }).waitFor();
    // Server unreachable.
    await p.route('**/api/**', (route) => route.abort('connectionrefused'));
    await p.fill('#auth-password', PASSWORD);
    await p.click('#auth-submit');
    await p.locator('#auth-error', { hasText: 'Cannot reach the server' }).waitFor();
    await p.unroute('**/api/**');
    await signIn(p, name);
    await p.context().close();
  });

  it('two users chat in real time: order, own messages, members, presence, typing', async () => {
    const { alice, bob, aliceName, bobName } = await twoInARoom('general');
    // Members with presence.
    await bob.locator(`#member-list .member[data-presence="online"]`, { hasText: aliceName }).waitFor();
    await alice.locator(`#member-list .member[data-presence="online"]`, { hasText: bobName }).waitFor();

    const lines = ['hi bob', 'hi alice!', 'how are you?', 'fine, thanks'];
    await send(alice, lines[0]);
    await bob.locator('#messages .msg .body', { hasText: lines[0] }).waitFor();
    await send(bob, lines[1]);
    await alice.locator('#messages .msg .body', { hasText: lines[1] }).waitFor();
    await send(alice, lines[2]);
    await send(bob, lines[3]);
    for (const p of [alice, bob]) {
      await p.waitForFunction(
        (n) => document.querySelectorAll('#messages .msg:not(.pending)').length === n,
        lines.length,
      );
    }
    const seenByAlice = await messageTexts(alice);
    const seenByBob = await messageTexts(bob);
    assert.deepEqual(seenByAlice, seenByBob, 'both see the same order');
    assert.deepEqual([...seenByAlice].sort(), [...lines].sort());
    assert.equal(seenByAlice[0], lines[0]);
    assert.equal(seenByAlice[1], lines[1]);
    // Own messages look different.
    assert.equal(await alice.locator('#messages .msg.own').count(), 2);
    assert.equal(await bob.locator('#messages .msg.own').count(), 2);
    assert.equal(
      await alice.locator('#messages .msg.own .body').first().textContent(),
      lines[0],
    );

    // Typing appears, then goes away when the message is sent.
    await bob.fill('#message-input', '');
    await bob.type('#message-input', 'typing somet', { delay: 20 });
    await alice.locator('#typing', { hasText: `${bobName} is typing…` }).waitFor();
    await bob.type('#message-input', 'hing');
    await bob.press('#message-input', 'Enter');
    await alice.locator('#messages .msg .body', { hasText: 'typing something' }).waitFor();
    await alice.waitForFunction(() => document.getElementById('typing').textContent === '');

    // Presence: away, then busy.
    await alice.selectOption('#presence-select', 'away');
    await bob.locator(`#member-list .member[data-presence="away"]`, { hasText: aliceName }).waitFor();
    await alice.selectOption('#presence-select', 'busy');
    await bob.locator(`#member-list .member[data-presence="busy"]`, { hasText: aliceName }).waitFor();
    await alice.selectOption('#presence-select', 'online');
    await bob.locator(`#member-list .member[data-presence="online"]`, { hasText: aliceName }).waitFor();
    await screenshot(bob, 'room');

    // Leaving: bob's member entry disappears for alice.
    await bob.click('#leave-room');
    await bob.click('#leave-room');
    await bob.locator('#empty-view').waitFor();
    await alice.locator('#member-list .member', { hasText: bobName }).waitFor({ state: 'detached' });
    await alice.context().close();
    await bob.context().close();
  });

  it('shows markup in a message as text and runs nothing', async () => {
    const { alice, bob } = await twoInARoom('<b>xss</b>');
    const evil = '<img src=x onerror=alert(1)>';
    await alice.evaluate(() => {
      window.__pwned = false;
      window.alert = () => {
        window.__pwned = true;
      };
    });
    await bob.evaluate(() => {
      window.__pwned = false;
    });
    await send(alice, evil);
    for (const p of [alice, bob]) {
      await p.locator('#messages .msg .body', { hasText: evil }).waitFor();
      assert.equal(await p.locator('#messages img').count(), 0, 'no <img> was created');
      assert.equal(await p.locator('#room-list b, #room-name b').count(), 0, 'room name is text');
      const texts = await messageTexts(p);
      assert.ok(texts.includes(evil));
      assert.deepEqual(p.dialogs, [], 'no dialog fired');
      assert.equal(await p.evaluate(() => window.__pwned), false);
    }
    await alice.context().close();
    await bob.context().close();
  });

  it('loads older history page by page when scrolling up, sticks to the bottom otherwise', async () => {
    // Bob joins after the messages were sent, so they are history to him.
    const alice = await page();
    await signUp(alice, uniqueName('alice'));
    const room = uniqueName('history');
    const roomId = await createRoom(alice, room);
    const total = 120;
    // Alice sends through her page's socket, pacing under the rate limit.
    await alice.evaluate(async ({ total, roomId }) => {
      const sock = window.__mesh.socket;
      for (let i = 1; i <= total; i++) {
        for (;;) {
          try {
            await sock.request('chat.message.send', {
              room_id: roomId,
              content: `history ${i}`,
              client_id: `h-${roomId}-${i}`,
            });
            break;
          } catch (e) {
            if (e.code !== 'rate_limited') throw e;
            await new Promise((r) => setTimeout(r, e.retryAfterMs || 100));
          }
        }
      }
    }, { total, roomId });

    const bob = await page();
    await signUp(bob, uniqueName('bob'));
    await openRoom(bob, room);
    await bob.locator('#messages .msg .body', { hasText: `history ${total}` }).waitFor();
    const firstPage = await messageTexts(bob);
    assert.ok(firstPage.length < total, `only the newest page first (${firstPage.length})`);
    // Scroll up until the beginning.
    await bob.waitForFunction(
      (total) => {
        const tl = document.getElementById('timeline');
        tl.scrollTop = 0;
        tl.dispatchEvent(new Event('scroll'));
        return document.querySelectorAll('#messages .msg').length === total;
      },
      total,
      { polling: 100 },
    );
    await bob.locator('#history-status', { hasText: 'beginning' }).waitFor();
    const all = await messageTexts(bob);
    assert.deepEqual(all, Array.from({ length: total }, (_, i) => `history ${i + 1}`));

    // Scrolled up: a new message does not pull the view down.
    await bob.evaluate(() => {
      document.getElementById('timeline').scrollTop = 200;
    });
    await send(alice, 'while you read');
    await bob.locator('#messages .msg .body', { hasText: 'while you read' }).waitFor();
    await bob.locator('#jump').waitFor();
    assert.ok(await bob.evaluate(() => document.getElementById('timeline').scrollTop < 400));
    // At the bottom: it sticks.
    await bob.click('#jump');
    await send(alice, 'at the bottom');
    await bob.locator('#messages .msg .body', { hasText: 'at the bottom' }).waitFor();
    await bob.waitForFunction(() => {
      const tl = document.getElementById('timeline');
      return tl.scrollHeight - tl.scrollTop - tl.clientHeight < 60;
    });
    await alice.context().close();
    await bob.context().close();
  });

  it('reconnects after going offline and fills the gap, nothing twice', async () => {
    const { alice, bob } = await twoInARoom('offline');
    await send(alice, 'before');
    await bob.locator('#messages .msg .body', { hasText: 'before' }).waitFor();

    await bob.context().setOffline(true);
    await bob.locator('#conn-status:not([data-state="connected"])').waitFor();
    const missed = ['missed 1', 'missed 2', 'missed 3'];
    for (const m of missed) await send(alice, m);
    // Bob writes while offline: it waits in the outbox.
    await send(bob, 'written offline');
    await bob.locator('#messages .msg.pending .body', { hasText: 'written offline' }).waitFor();

    await bob.context().setOffline(false);
    await bob.locator('#conn-status[data-state="connected"]').waitFor();
    await bob.locator('#messages .msg:not(.pending) .body', { hasText: 'written offline' }).waitFor();
    await alice.locator('#messages .msg .body', { hasText: 'written offline' }).waitFor();
    for (const m of missed) await bob.locator('#messages .msg .body', { hasText: m }).waitFor();
    const expected = ['before', ...missed];
    const bobSees = await messageTexts(bob);
    assert.deepEqual(bobSees.slice(0, 4), expected);
    assert.equal(bobSees.filter((t) => t === 'written offline').length, 1);
    assert.equal(bobSees.length, 5, `each once: ${JSON.stringify(bobSees)}`);
    const aliceSees = await messageTexts(alice);
    assert.equal(aliceSees.filter((t) => t === 'written offline').length, 1);
    assert.equal(await bob.locator('#messages .msg.pending').count(), 0);
    await alice.context().close();
    await bob.context().close();
  });

  it('reconnects after a server restart on the same data and port, and catches up', async () => {
    const { alice, bob } = await twoInARoom('restart');
    await send(alice, 'first');
    await bob.locator('#messages .msg .body', { hasText: 'first' }).waitFor();
    const { dataDir, addr } = server;
    await server.stop();
    await bob.locator('#conn-status[data-state="reconnecting"]').waitFor();
    await alice.locator('#conn-status[data-state="reconnecting"]').waitFor();
    server = await startServer({ dataDir, listen: addr });
    await alice.locator('#conn-status[data-state="connected"]').waitFor({ timeout: 30000 });
    await send(alice, 'after restart');
    await bob.locator('#conn-status[data-state="connected"]').waitFor({ timeout: 30000 });
    await bob.locator('#messages .msg .body', { hasText: 'after restart' }).waitFor();
    assert.deepEqual(await messageTexts(bob), ['first', 'after restart']);
    await alice.context().close();
    await bob.context().close();
  });

  it('one user video-calls the other; both peer connections connect with remote video playing', async () => {
    // Bob is in the room before Alice's page connects: Alice learns Bob's
    // peer id because Bob answers her announcement.
    const { alice, bob, bobName, aliceName } = await twoInARoom('call');
    await alice.reload();
    await waitConnected(alice);
    const callBob = alice.locator(`#member-list .member`, { hasText: bobName }).locator('button[aria-label^="Video call"]');
    await callBob.waitFor();
    await alice.waitForFunction(
      (label) => {
        const b = document.querySelector(`button[aria-label="${label}"]`);
        return b && !b.disabled;
      },
      `Video call ${bobName}`,
    );
    await callBob.click();
    await bob.locator('#incoming-text', { hasText: `${aliceName} is calling you` }).waitFor();
    await bob.click('#accept-call');

    const connected = () =>
      window.__mesh.pc?.connectionState === 'connected' &&
      (() => {
        const v = document.getElementById('remote-video');
        const s = v.srcObject;
        return (
          s &&
          s.getVideoTracks().some((t) => t.readyState === 'live') &&
          v.readyState >= 2 &&
          !v.paused &&
          v.videoWidth > 0
        );
      })();
    await alice.waitForFunction(connected, null, { timeout: 20000 });
    await bob.waitForFunction(connected, null, { timeout: 20000 });
    // Frames keep coming.
    await bob.waitForFunction(() => {
      const v = document.getElementById('remote-video');
      return v.getVideoPlaybackQuality().totalVideoFrames > 5;
    });
    await alice.locator('#call-status', { hasText: `In a call with ${bobName}` }).waitFor();
    await screenshot(bob, 'call');

    await alice.click('#hangup');
    await bob.locator('#call').waitFor({ state: 'hidden' });
    await alice.locator('#call').waitFor({ state: 'hidden' });
    assert.equal(await bob.evaluate(() => window.__mesh.pc), null);
    await alice.context().close();
    await bob.context().close();
  });

  it('works on a phone-sized screen', async () => {
    const p = await page({ viewport: { width: 390, height: 780 }, context: { isMobile: true, hasTouch: true } });
    await signUp(p, uniqueName('phone'));
    const room = uniqueName('mobile');
    await createRoom(p, room);
    assert.equal(await p.locator('#sidebar').isVisible(), false, 'the room takes the screen');
    await send(p, 'from my phone');
    await p.locator('#messages .msg.own:not(.pending) .body', { hasText: 'from my phone' }).waitFor();
    const overflow = await p.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
    assert.equal(overflow, false, 'no horizontal scrolling');
    await screenshot(p, 'phone');
    await p.click('#back');
    await p.locator('#sidebar').waitFor();
    await p.context().close();
  });
});

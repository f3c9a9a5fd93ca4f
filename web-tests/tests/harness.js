// Test harness: a real mesh-server process and a real Chromium.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const TARGET = process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target');
export const SERVER_BIN = process.env.MESH_SERVER_BIN || path.join(TARGET, 'debug', 'mesh-server');
export const SCREENSHOTS = process.env.MESH_SCREENSHOTS || path.join(TARGET, 'screenshots');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/** Builds the server unless MESH_SERVER_BIN points at one already. */
export function buildServer() {
  if (process.env.MESH_SERVER_BIN) return;
  execFileSync('cargo', ['build', '-q', '-p', 'mesh-server-bin', '--bin', 'mesh-server'], {
    cwd: ROOT,
    stdio: 'inherit',
  });
}

/**
 * Starts `mesh-server --listen <listen> --data <dir>` and resolves once its
 * log says `listening on <addr>`.
 */
export function startServer({ dataDir, listen = '127.0.0.1:0' } = {}) {
  const dir = dataDir || mkdtempSync(path.join(tmpdir(), 'mesh-web-'));
  const proc = spawn(SERVER_BIN, ['--listen', listen, '--data', dir], {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${log}`)), 30000);
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (chunk) => {
      log += chunk;
      const m = /listening on (\S+)/.exec(log);
      if (m && timer) {
        clearTimeout(timer);
        const addr = m[1];
        resolve({
          addr,
          url: `http://${addr}`,
          dataDir: dir,
          proc,
          log: () => log,
          async stop() {
            if (proc.exitCode !== null) return;
            const done = new Promise((r) => proc.once('exit', r));
            proc.kill('SIGTERM');
            await done;
          },
          cleanup() {
            rmSync(dir, { recursive: true, force: true });
          },
        });
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${log}`));
    });
  });
}

export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
    ],
  });
}

/** A new page that fails the test on page errors and records dialogs. */
export async function newPage(browser, server, opts = {}) {
  const context = await browser.newContext({
    baseURL: server.url,
    viewport: opts.viewport || { width: 1100, height: 720 },
    ...(opts.context || {}),
  });
  const page = await context.newPage();
  page.dialogs = [];
  page.errors = [];
  page.on('dialog', (d) => {
    page.dialogs.push(d.message());
    d.dismiss().catch(() => {});
  });
  page.on('pageerror', (e) => page.errors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error' && process.env.MESH_TEST_VERBOSE) console.log('[page]', m.text());
  });
  await page.goto('/');
  return page;
}

let counter = 0;
/** A fresh, valid username. */
export function uniqueName(base) {
  counter += 1;
  return `${base}${Date.now().toString(36).slice(-4)}${counter}`;
}

export const PASSWORD = 'correct horse battery';

/** Signs up through the form and waits for the connected app. */
export async function signUp(page, username, password = PASSWORD) {
  await page.click('#tab-signup');
  await page.fill('#auth-username', username);
  await page.fill('#auth-password', password);
  await page.click('#auth-submit');
  await waitConnected(page);
}

export async function signIn(page, username, password = PASSWORD) {
  await page.click('#tab-signin');
  await page.fill('#auth-username', username);
  await page.fill('#auth-password', password);
  await page.click('#auth-submit');
  await waitConnected(page);
}

export async function waitConnected(page) {
  await page.locator('#conn-status[data-state="connected"]').waitFor();
}

export async function createRoom(page, name, visibility = 'public') {
  await page.fill('#new-room-name', name);
  await page.selectOption('#new-room-visibility', visibility);
  await page.click('#new-room-create');
  await page.locator('#room-name', { hasText: name }).waitFor();
  return page.evaluate(() => window.__mesh.state.current);
}

export async function openRoom(page, name) {
  await page.locator('.room-link', { hasText: name }).click();
  await page.locator('#room-name', { hasText: name }).waitFor();
  // Joined: our own name is in the member list.
  await page.locator('#member-list .member').first().waitFor();
}

export async function send(page, text) {
  await page.fill('#message-input', text);
  await page.press('#message-input', 'Enter');
}

/** The texts of the confirmed messages in the open room, in order. */
export function messageTexts(page) {
  return page.$$eval('#messages .msg:not(.pending) .body', (nodes) => nodes.map((n) => n.textContent));
}

export async function screenshot(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  const file = path.join(SCREENSHOTS, `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

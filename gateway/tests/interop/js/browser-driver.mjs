#!/usr/bin/env node
// Headless Chromium (the Debian package, /usr/bin/chromium or
// RINGWAY_CHROMIUM) driven by playwright-core, for the browser tests of
// gateway/tests/browser.rs (through gateway/tests/browser/driver.rs).
//
// One JSON object per line on stdin, one answer per line on stdout:
//   {"id":1,"op":"page","label":"alice"}            -> {"id":1,"ok":true,"value":<page>}
//   {"id":2,"op":"goto","page":1,"url":"http://..."}
//   {"id":3,"op":"eval","page":1,"expr":"document.title"}
//   {"id":4,"op":"wait_for","page":1,"expr":"...","timeout_ms":20000}
//   {"id":5,"op":"fill","page":1,"selector":"#name","text":"alice"}
//   {"id":6,"op":"press","page":1,"key":"Enter"}
//   {"id":7,"op":"screenshot","page":1,"path":"/tmp/x.png"}
// Failures answer {"id":N,"ok":false,"error":"..."}. Pages also report
// {"event":"console","page":1,"line":"..."}: console messages, uncaught
// errors and Content-Security-Policy violations. Every page is a browser
// context of its own (separate users: no shared cache or storage). Closing
// stdin closes the browser.

import readline from 'node:readline';
import { chromium } from 'playwright-core';

const executablePath = process.env.RINGWAY_CHROMIUM || '/usr/bin/chromium';

function send(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-dev-shm-usage',
    '--no-first-run',
    '--disable-extensions',
    '--disable-sync',
    '--disable-component-update',
    '--disable-background-networking',
    '--disable-crash-reporter',
    '--disable-breakpad',
    '--disable-quic',
    // Pages the test is not looking at keep running at full speed.
    '--disable-background-timer-throttling',
    '--disable-backgrounding-occluded-windows',
    '--disable-renderer-backgrounding',
  ],
});

const pages = new Map();
let nextPage = 1;

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1000, height: 800 } });
  // CSP violations go to the console too, where the tests look for them.
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error(`Content Security Policy violation: ${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  const page = await context.newPage();
  const id = nextPage++;
  pages.set(id, page);
  page.on('console', (m) => send({ event: 'console', page: id, line: `${m.type()}: ${m.text()}` }));
  page.on('pageerror', (e) => send({ event: 'console', page: id, line: `uncaught: ${e.message}` }));
  page.on('requestfailed', (r) =>
    send({ event: 'console', page: id, line: `request failed: ${r.url()} ${r.failure()?.errorText ?? ''}` }),
  );
  return id;
}

function page(req) {
  const p = pages.get(req.page);
  if (!p) throw new Error(`no page ${req.page}`);
  return p;
}

async function handle(req) {
  switch (req.op) {
    case 'page':
      return newPage();
    case 'goto':
      await page(req).goto(req.url, { waitUntil: 'load', timeout: 20000 });
      return null;
    case 'eval':
      return await page(req).evaluate(req.expr);
    case 'wait_for': {
      // Polled with evaluate (DevTools evaluation): waitForFunction with a
      // string predicate evals inside the page, which the demo's Content
      // Security Policy forbids.
      const p = page(req);
      const deadline = Date.now() + req.timeout_ms;
      for (;;) {
        const value = await p.evaluate(req.expr);
        if (value) return value;
        if (Date.now() > deadline) throw new Error(`timed out after ${req.timeout_ms} ms`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    case 'fill':
      await page(req).fill(req.selector, req.text, { timeout: 20000 });
      return null;
    case 'press':
      await page(req).keyboard.press(req.key);
      return null;
    case 'screenshot':
      await page(req).screenshot({ path: req.path });
      return null;
    default:
      throw new Error(`unknown op ${req.op}`);
  }
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let req;
  try {
    req = JSON.parse(line);
  } catch (err) {
    send({ id: null, ok: false, error: `bad request: ${err.message}` });
    return;
  }
  handle(req).then(
    (value) => send({ id: req.id, ok: true, value: value === undefined ? null : value }),
    (err) => send({ id: req.id, ok: false, error: String((err && err.message) || err) }),
  );
});
rl.on('close', async () => {
  await browser.close().catch(() => {});
  process.exit(0);
});
send({ event: 'ready', version: browser.version() });

// Proves that Chromium opens 10 event streams to one origin over HTTP/2 (TLS, ALPN h2) and all
// of them are live at once and get every event: over HTTP/1.1 the browser allows only 6
// connections per origin, so the seventh stream would stall without a word.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { Server, addProject, addSessions } from "./harness.mjs";

const STREAMS = 10;

test("ten EventSource streams on one origin over HTTP/2 are all live", async () => {
  const server = new Server({ tls: true });
  const profile = mkdtempSync(join(tmpdir(), "changefeed-chromium-"));
  let browser;
  try {
    await server.start();
    addProject(server, "p1");
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      headless: true,
      ignoreHTTPSErrors: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--no-first-run", "--disable-component-update", "--disable-sync", "--ignore-certificate-errors"],
    });
    const page = await browser.newPage();
    await page.goto(`${server.url}/`);
    const protocol = await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
    assert.equal(protocol, "h2", "the page itself came over HTTP/2");
    await page.evaluate((n) => {
      window.streams = [];
      for (let i = 0; i < n; i++) {
        const state = { ready: 0, received: [] };
        const source = new EventSource("/api/v1/events?project=p1");
        source.addEventListener("changefeed.ready", () => { state.ready += 1; });
        source.addEventListener("session_created", (event) => { state.received.push(event.lastEventId); });
        window.streams.push(state);
      }
    }, STREAMS);
    await page.waitForFunction(() => window.streams.every((s) => s.ready === 1), null, { timeout: 15000 });
    addSessions(server, "p1", 3);
    const expected = server.seqs("project_id = 'p1'");
    await page.waitForFunction((n) => window.streams.every((s) => s.received.length >= n),
      expected.length, { timeout: 15000 });
    const streams = await page.evaluate(() => window.streams);
    for (const [i, state] of streams.entries()) {
      const seqs = state.received.map((id) => Number(id.split(":")[1]));
      assert.deepEqual(seqs, expected, `stream ${i}: every event once, in order`);
    }
  } finally {
    if (browser) await browser.close();
    await server.stop();
    server.cleanup();
    rmSync(profile, { recursive: true, force: true });
  }
});

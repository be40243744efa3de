// Proves that Chromium's own EventSource, on the viewer page, receives every event of its project
// exactly once across a server restart (the browser reconnects with Last-Event-ID by itself),
// and that payload text is shown as text, never as HTML.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { Server, addProject, addSessions, waitFor } from "./harness.mjs";

/** Debian's Chromium with a fresh profile; no browser download, no background networking. */
function launch(profile) {
  return chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
      "--no-first-run", "--disable-component-update", "--disable-sync"],
  });
}

test("viewer page survives a server restart with no loss or duplicate", async () => {
  const server = new Server();
  const profile = mkdtempSync(join(tmpdir(), "changefeed-chromium-"));
  let browser;
  try {
    await server.start();
    addProject(server, "p1");
    addProject(server, "p2");
    browser = await launch(profile);
    const page = await browser.newPage();
    await page.goto(`${server.url}/?projects=p1`);
    await page.waitForFunction(() => window.changefeed && window.changefeed.ready === 1);

    addSessions(server, "p1", 5);
    addSessions(server, "p2", 3);
    // A session_updated payload carrying markup: the page must show it as text.
    addSessions(server, "p1", 1);
    server.sql(`UPDATE sessions SET display_name = '<img src=x onerror="document.title=''pwned''">'
      WHERE rowid = (SELECT max(rowid) FROM sessions WHERE project_id = 'p1');`);
    const before = server.seqs("project_id = 'p1'");
    await page.waitForFunction((n) => window.changefeed.received.length >= n, before.length);

    await server.stop();
    await waitFor("the page to notice the server is gone", () =>
      page.evaluate(() => document.getElementById("state").dataset.state === "connecting"));
    addSessions(server, "p1", 4);  // written while the server is down
    addSessions(server, "p2", 2);
    await server.start();
    addSessions(server, "p1", 3);  // written after the restart
    const expected = server.seqs("project_id = 'p1'");
    await page.waitForFunction((n) => window.changefeed.received.length >= n, expected.length);

    const state = await page.evaluate(() => window.changefeed);
    assert.deepEqual(state.received, expected, "exactly the project's events, once, in order");
    assert.equal(state.resets.length, 0, "no reset: the browser's Last-Event-ID was honoured");
    assert.equal(state.ready, 2, "one ready per connection");
    assert.equal(await page.locator("#events img").count(), 0, "payload text never becomes HTML");
    assert.notEqual(await page.title(), "pwned");
    assert.match(await page.locator("#events").innerText(), /<img src=x onerror=/);
  } finally {
    if (browser) await browser.close();
    await server.stop();
    server.cleanup();
    rmSync(profile, { recursive: true, force: true });
  }
});

test("viewer page shows a visible notice on changefeed.reset", async () => {
  const server = new Server();
  const profile = mkdtempSync(join(tmpdir(), "changefeed-chromium-"));
  let browser;
  try {
    await server.start();
    addProject(server, "p1");
    addSessions(server, "p1", 2);
    browser = await launch(profile);
    const page = await browser.newPage();
    await page.goto(`${server.url}/?projects=p1`);
    await page.waitForFunction(() => window.changefeed && window.changefeed.ready === 1);
    // Swap in a different database behind the same address: the browser's cursor now belongs
    // to another log (epoch mismatch), which must be signalled, not silently accepted.
    await server.stop();
    server.sql("DELETE FROM changefeed_meta WHERE key = 'epoch';" +
      "INSERT INTO changefeed_meta (key, value) VALUES ('epoch', '0123456789abcdef');");
    await server.start();
    await page.waitForFunction(() => window.changefeed.resets.length === 1);
    const notice = page.locator("#notice");
    assert.ok(await notice.isVisible());
    assert.match(await notice.innerText(), /epoch_mismatch/);
  } finally {
    if (browser) await browser.close();
    await server.stop();
    server.cleanup();
    rmSync(profile, { recursive: true, force: true });
  }
});

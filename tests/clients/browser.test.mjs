// Proves that Chromium's own EventSource, on the viewer page, receives every event of its project
// exactly once across a server restart (the browser reconnects with Last-Event-ID by itself),
// that payload text is shown as text, never as HTML; that with auth on the page is refused
// (401, shown) without the changefeed_token cookie and streams exactly the token's grant with
// it (sealed ids, the token never in the URL); and that its Sessions and Last fields become
// session= and last=; and that it shows kinds beyond changefeed's own (the daemon's, and any exact kind typed in Types).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { Server, addProject, addSessions, waitFor } from "./harness.mjs";
import { randomBytes } from "node:crypto";

/** Debian's Chromium with a fresh profile; no browser download, no background networking. */
function launch(profile) {
  return chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
      "--no-first-run", "--disable-component-update", "--disable-sync"],
  });
}

/**
 * Runs `body(server, openBrowser)` against a started server (`configure` sets it up first),
 * with a Chromium launched on demand; both are cleaned up however the body ends.
 */
async function withViewer({ configure } = {}, body) {
  const server = new Server();
  if (configure) configure(server);
  const profile = mkdtempSync(join(tmpdir(), "changefeed-chromium-"));
  let browser;
  try {
    await server.start();
    await body(server, async () => (browser = await launch(profile)));
  } finally {
    if (browser) await browser.close();
    await server.stop();
    server.cleanup();
    rmSync(profile, { recursive: true, force: true });
  }
}

test("viewer page survives a server restart with no loss or duplicate", () => withViewer({}, async (server, openBrowser) => {
  addProject(server, "p1");
  addProject(server, "p2");
  const browser = await openBrowser();
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
}));

test("viewer page shows a visible notice on changefeed.reset", () => withViewer({}, async (server, openBrowser) => {
  addProject(server, "p1");
  addSessions(server, "p1", 2);
  const browser = await openBrowser();
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
}));

test("viewer page: 401 without the changefeed_token cookie, the token's grant with it", () => withViewer({
  configure: (server) => {
    server.args = ["--tokens", server.privateFile("tokens", "Tok3n-p1-browser p1\n"),
      "--id-key", server.privateFile("id.key", randomBytes(32).toString("hex") + "\n")];
  },
}, async (server, openBrowser) => {
  addProject(server, "p1");
  addProject(server, "p2");
  const browser = await openBrowser();
  const page = await browser.newPage();
  await page.goto(`${server.url}/`);
  // No cookie: the EventSource is refused, and the page shows why.
  await waitFor("the page to show the 401", () =>
    page.evaluate(() => document.getElementById("state").textContent.includes("unauthorized")));
  assert.equal(await page.evaluate(() => window.changefeed.ready), 0);
  assert.deepEqual(await browser.cookies(), []);

  await page.fill("#token", "Tok3n-p1-browser");
  await page.click("button[type=submit]");
  await page.waitForFunction(() => window.changefeed.ready === 1);
  const cookies = await browser.cookies();
  assert.deepEqual(cookies.map((c) => [c.name, c.value, c.path, c.sameSite]),
    [["changefeed_token", "Tok3n-p1-browser", "/api/v1", "Strict"]]);
  assert.ok(!page.url().includes("Tok3n"), `the token is not in the URL: ${page.url()}`);

  const before = Number(server.sql("SELECT coalesce(max(seq), 0) FROM change_log;").trim());
  addSessions(server, "p1", 3);
  addSessions(server, "p2", 2);
  addSessions(server, "p1", 1);
  const expected = server.seqs(`project_id = 'p1' AND seq > ${before}`);
  await page.waitForFunction((n) => window.changefeed.events.length >= n, expected.length);
  const state = await page.evaluate(() => window.changefeed);
  assert.equal(state.events.length, expected.length, "exactly the granted project's events");
  assert.ok(state.events.every((e) => e.project === "p1"), JSON.stringify(state.events));
  assert.ok(state.events.every((e) => /^[A-Za-z0-9_-]{54}$/.test(e.id)), "sealed ids");
  assert.ok(state.received.every((seq) => seq === undefined), "no seq in the event JSON");
  assert.equal(new Set(state.events.map((e) => e.id)).size, state.events.length, "no duplicate");

  // A page asking for a project outside the grant is refused with 403, shown.
  const other = await browser.newPage();
  await other.goto(`${server.url}/?projects=p2`);
  await waitFor("the page to show the 403", () =>
    other.evaluate(() => document.getElementById("state").textContent.includes("forbidden")));
}));

test("viewer page: Sessions and Last become session= and last=", () => withViewer({}, async (server, openBrowser) => {
  addProject(server, "p1");
  addSessions(server, "p1", 6);
  const session = server.sql("SELECT id FROM sessions ORDER BY rowid LIMIT 1 OFFSET 2;").trim();
  server.sql(`UPDATE sessions SET display_name = 'renamed' WHERE id = '${session}';`);
  addSessions(server, "p1", 2);
  const browser = await openBrowser();

  // last=3: the newest three events of the project, then live.
  const recent = await browser.newPage();
  await recent.goto(`${server.url}/?projects=p1&last=3`);
  await recent.waitForFunction(() => window.changefeed.ready === 1);
  const all = server.seqs("project_id = 'p1'");
  assert.deepEqual(await recent.evaluate(() => window.changefeed.received), all.slice(-3));
  assert.equal(await recent.inputValue("#last"), "3");

  // One session, typed into the form: its whole history (last=100), then its live events.
  const one = await browser.newPage();
  await one.goto(`${server.url}/`);
  await one.waitForFunction(() => window.changefeed.ready === 1);
  await one.fill("#sessions", session);
  await one.fill("#last", "100");
  await one.click("button[type=submit]");
  await one.waitForFunction(() => window.changefeed.ready === 2);
  assert.match(one.url(), new RegExp(`sessions=${session}.*last=100`));
  server.sql(`UPDATE sessions SET display_name = 'again' WHERE id = '${session}';`);
  addSessions(server, "p1", 1);
  const mine = server.seqs(`session_id = '${session}'`);
  assert.equal(mine.length, 3, "created, renamed, renamed again");
  await one.waitForFunction((n) => window.changefeed.received.length >= n, mine.length);
  // A later event of another session would arrive after these; the recent page sees it.
  await recent.waitForFunction((n) => window.changefeed.received.length >= n, 3 + 2);
  assert.deepEqual(await one.evaluate(() => window.changefeed.received), mine);
  assert.ok((await one.evaluate(() => window.changefeed.events)).every((e) => e.session === session));
}));

test("viewer page shows the daemon's kinds, and any exact kind typed in Types", () => withViewer({}, async (server, openBrowser) => {
  addProject(server, "p1");
  const browser = await openBrowser();
  const page = await browser.newPage();
  await page.goto(`${server.url}/?projects=p1`);
  await page.waitForFunction(() => window.changefeed && window.changefeed.ready === 1);
  const insert = (kind) => server.sql("INSERT INTO change_log (project_id, event_type, payload) " +
    `VALUES ('p1', '${kind}', '{}'); SELECT last_insert_rowid();`).trim();
  const custom = Number(insert("custom_kind"));
  const review = Number(insert("review_run_created"));
  await page.waitForFunction((seq) => window.changefeed.received.includes(seq), review);
  // Events arrive in seq order: had custom_kind a listener, it would be in by now.
  assert.ok(!(await page.evaluate(() => window.changefeed.received)).includes(custom),
    "a kind the page does not know needs to be asked for");

  const typed = await browser.newPage();
  await typed.goto(`${server.url}/?projects=p1&types=custom_kind&last=10`);
  await typed.waitForFunction(() => window.changefeed.ready === 1);
  const later = Number(insert("custom_kind"));
  await typed.waitForFunction((seq) => window.changefeed.received.includes(seq), later);
  assert.deepEqual(await typed.evaluate(() => window.changefeed.received), [custom, later]);
}));

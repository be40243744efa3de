// Proves that the npm `eventsource` client receives every event of its scope exactly once
// across a server restart, resuming with Last-Event-ID on its own.
import { test } from "node:test";
import assert from "node:assert/strict";
import { EventSource } from "eventsource";
import { Server, addProject, addSessions, waitFor } from "./harness.mjs";

test("eventsource resumes across a server restart with no loss or duplicate", async () => {
  const server = new Server();
  let source;
  try {
    await server.start();
    addProject(server, "p1");
    addProject(server, "p2");
    const received = [];
    let ready = 0;
    const resets = [];
    source = new EventSource(`${server.url}/api/v1/events?project=p1&types=session_*`);
    source.addEventListener("session_created", (e) => received.push(JSON.parse(e.data).seq));
    source.addEventListener("changefeed.ready", () => { ready += 1; });
    source.addEventListener("changefeed.reset", (e) => resets.push(JSON.parse(e.data)));
    await waitFor("ready", () => ready === 1);

    addSessions(server, "p1", 5);
    addSessions(server, "p2", 5);
    await waitFor("the first events", () => received.length >= 5);
    await server.stop();
    addSessions(server, "p1", 4);
    await server.start();
    addSessions(server, "p1", 3);
    const expected = server.seqs("project_id = 'p1' AND event_type GLOB 'session_*'");
    await waitFor("every event", () => received.length >= expected.length);
    await waitFor("the second ready", () => ready === 2);
    assert.deepEqual(received, expected);
    assert.equal(resets.length, 0);
  } finally {
    if (source) source.close();
    await server.stop();
    server.cleanup();
  }
});

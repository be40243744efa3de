// Shared pieces of the real-client tests: run the real server binary on a real SQLite file,
// write through the sqlite3 CLI (another process, as the daemon would), and wait on conditions.
import { spawn, execFileSync } from "node:child_process";
import { request as httpsRequest } from "node:https";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const BIN = process.env.CHANGEFEED_BIN;
if (!BIN) throw new Error("CHANGEFEED_BIN must name the changefeed binary (scripts/client-tests.sh sets it)");

export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Polls `check` until it returns a truthy value; fails after `timeoutMs` (a bound, not a sleep). */
export async function waitFor(what, check, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** A self-signed certificate for localhost and 127.0.0.1 (the `openssl` CLI), as PEM files. */
export function selfSignedCertificate(dir) {
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], { stdio: "ignore" });
  return { cert, key };
}

/** `GET url` over HTTPS accepting any certificate; resolves to the status code, rejects on error. */
function insecureStatus(url) {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { rejectUnauthorized: false }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.once("error", reject);
    req.end();
  });
}

export class Server {
  /**
   * `tls: true` serves HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with a self-signed certificate;
   * `args` are more `serve` flags (`--tokens` …).
   */
  constructor({ tls = false, args = [] } = {}) {
    this.dir = mkdtempSync(join(tmpdir(), "changefeed-clients-"));
    this.db = join(this.dir, "feed.db");
    this.child = null;
    this.tls = tls ? selfSignedCertificate(this.dir) : null;
    this.args = args;
  }

  async start(port) {
    this.port = port ?? this.port ?? (await freePort());
    const tlsArgs = this.tls ? ["--tls-cert", this.tls.cert, "--tls-key", this.tls.key] : [];
    this.child = spawn(BIN, ["serve", "--database", `sqlite://${this.db}`,
      "--listen", `127.0.0.1:${this.port}`, "--retry-ms", "200", "--heartbeat", "1", ...tlsArgs,
      ...this.args],
      { stdio: ["ignore", "inherit", "inherit"] });
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.exited = exited;
    await waitFor("the server to answer /healthz", async () => {
      try {
        if (this.tls) return (await insecureStatus(`${this.url}/healthz`)) === 200;
        const res = await fetch(`${this.url}/healthz`);
        return res.ok;
      } catch (_) {
        return false;
      }
    });
  }

  get url() {
    return `${this.tls ? "https" : "http"}://127.0.0.1:${this.port}`;
  }

  async stop() {
    if (!this.child) return;
    this.child.kill("SIGTERM");
    await this.exited;
    this.child = null;
  }

  sql(statements) {
    return execFileSync("sqlite3", ["-cmd", ".timeout 5000", this.db, statements], { encoding: "utf8" });
  }

  /** A private (0600) file in the server's directory, e.g. a tokens or id key file. */
  privateFile(name, content) {
    const path = join(this.dir, name);
    writeFileSync(path, content, { mode: 0o600 });
    chmodSync(path, 0o600);
    return path;
  }

  /** Seqs of the matching change_log rows, in order: what a client must receive. */
  seqs(where) {
    const out = this.sql(`SELECT seq FROM change_log WHERE ${where} ORDER BY seq;`);
    return out.split("\n").filter(Boolean).map(Number);
  }

  cleanup() {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

let counter = 0;
/** Inserts `n` sessions (one session_created event each) for `project`, via the sqlite3 CLI. */
export function addSessions(server, project, n) {
  const rows = [];
  for (let i = 0; i < n; i++) {
    counter += 1;
    rows.push(`INSERT INTO sessions (id, project_id) VALUES ('${project}-s${process.pid}-${counter}', '${project}');`);
  }
  server.sql(`BEGIN; ${rows.join(" ")} COMMIT;`);
}

export function addProject(server, id) {
  server.sql(`INSERT INTO projects (id, name) VALUES ('${id}', 'Project ${id}');`);
}

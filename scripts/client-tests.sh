#!/usr/bin/env bash
# Real clients nobody here wrote — headless Chromium (viewer page) and npm `eventsource` —
# against the real server binary, including a server restart mid-stream. Uses a Node >= 22.12
# (scripts/node.sh: the system's, or a pinned one from PyPI) and the locked npm packages.
set -euo pipefail
cd "$(dirname "$0")/.."
# The same feature set as the nextest build, so this reuses its compiled dependencies.
cargo build --profile fast --workspace --bins --tests
export CHANGEFEED_BIN="$PWD/target/fast/changefeed"
node_bin=$(scripts/node.sh)
export PATH="$node_bin:$PATH"
echo "node $(node --version), npm $(npm --version)"
cd tests/clients
export npm_config_update_notifier=false
# `npm ci` installs exactly the lockfile; skipped when node_modules already matches it.
if ! cmp -s package-lock.json node_modules/.changefeed-lock 2>/dev/null; then
  npm ci --no-audit --no-fund
  cp package-lock.json node_modules/.changefeed-lock
fi
node --test --test-concurrency=1 browser.test.mjs http2.test.mjs eventsource.test.mjs

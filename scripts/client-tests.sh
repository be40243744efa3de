#!/usr/bin/env bash
# Real clients nobody here wrote — headless Chromium (viewer page) and npm `eventsource` —
# against the real server binary, including a server restart mid-stream.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --profile fast -p changefeed --bin changefeed
export CHANGEFEED_BIN="$PWD/target/fast/changefeed"
cd tests/clients
if [ ! -d node_modules ]; then
  npm install --no-audit --no-fund --loglevel=error
fi
node --test --test-concurrency=1 browser.test.mjs eventsource.test.mjs

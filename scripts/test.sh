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

echo
echo "all checks passed"

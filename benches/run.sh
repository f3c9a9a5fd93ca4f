#!/usr/bin/env bash
# Builds the release server and load tool, then measures every figure of
# BENCHMARKS.md against its baseline (about 5 minutes on 2 cores).
#
#   ./benches/run.sh                 # all figures, JSON to target/bench.json
#   ./benches/run.sh fanout          # one figure (fanout, latency, memory,
#                                    # durable, logins, churn, p2p,
#                                    # login-memory, held, tls-churn,
#                                    # tls-fanout, p2p-relay; tls: both)
#   ./benches/run.sh all --quick     # smoke test: small sizes, short windows
#
# Micro-benchmarks (criterion) are separate: cargo bench -p mesh-benches
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p mesh-server-bin -p mesh-benches --bins
what="${1:-all}"
shift || true
exec target/release/mesh-load "$what" --json target/bench.json "$@"

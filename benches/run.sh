#!/usr/bin/env bash
# Builds the release server and load tool, then measures every figure of
# BENCHMARKS.md against its baseline (about 5 minutes on 2 cores, plus 6
# for figures 13 and 14).
#
#   ./benches/run.sh                 # all figures, JSON to target/bench.json
#   ./benches/run.sh fanout          # one figure (fanout, latency, memory,
#                                    # durable, logins, churn, p2p,
#                                    # login-memory, held, tls-churn,
#                                    # tls-fanout, p2p-relay, cluster-fanout,
#                                    # pg-durable; tls: both TLS figures;
#                                    # cluster: both PostgreSQL figures)
#   ./benches/run.sh all --quick     # smoke test: small sizes, short windows
#
# cluster-fanout and pg-durable (and all) need PostgreSQL and NATS: unless
# MESH_TEST_POSTGRES is set already, this starts throwaway ones with
# scripts/services.sh (root: PostgreSQL runs as the postgres user) and
# stops them at the end; without them, `all` skips those two figures.
#
# Micro-benchmarks (criterion) are separate: cargo bench -p mesh-benches
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p mesh-server-bin -p mesh-benches --bins
what="${1:-all}"
shift || true
case "$what" in
  all | cluster | cluster-fanout | pg-durable)
    if [ -z "${MESH_TEST_POSTGRES:-}" ]; then
      # shellcheck source=../scripts/services.sh
      source scripts/services.sh
      trap stop_services EXIT
      start_services || echo "PostgreSQL/NATS did not start: the cluster figures will not run" >&2
    fi
    ;;
esac
target/release/mesh-load "$what" --json target/bench.json "$@"

#!/usr/bin/env bash
# Runs every check and test of the workspace. Installs what it needs first,
# so it works on a fresh machine: this is the command the README gives and
# the one CI (.ci/run) calls.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's wall-clock time is printed when the next one starts, and the
# total when the script ends (passed or not).
script_start=$(date +%s)
step_start=$script_start
step_name=""
step_done() {
  if [ -n "$step_name" ]; then
    printf -- '-- %s: %d s\n' "${step_name:0:60}" $(( $(date +%s) - step_start ))
  fi
}
step() {
  step_done
  step_name="$*"
  step_start=$(date +%s)
  printf '\n== %s\n' "$*"
}
# The services started below are stopped however the script ends.
source scripts/services.sh
trap 'stop_services; step_done; printf -- "-- total: %d s\n" $(( $(date +%s) - script_start ))' EXIT

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"

step "toolchain components"
if command -v rustup >/dev/null 2>&1; then
  # llvm-tools: for the coverage step (cargo-llvm-cov).
  rustup component add rustfmt clippy llvm-tools-preview >/dev/null 2>&1 || true
fi

step "system packages (Debian): the services the tests start, Chromium, the JVM"
# One `apt-get update` and one install, of what is missing only. The tests
# start their own instances (PostgreSQL, nats-server, coturn, pebble, nginx)
# on free ports; CI=true makes a test without its service fail.
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
missing=""
for pkg in postgresql nats-server coturn pebble nginx-light iptables iproute2 procps conntrack iputils-ping openssl ca-certificates libnss3-tools chromium chromium-driver libjna-java; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
command -v java >/dev/null 2>&1 || missing="$missing openjdk-17-jre-headless"
command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm"
if [ -n "$missing" ]; then
  echo "installing:$missing"
  $SUDO apt-get update -qq
  # No recommends: big installs with them fail here.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

step "services: PostgreSQL and nats-server on free ports in a temporary folder (stopped at exit)"
start_services

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, -D warnings)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test (unit, conformance, integration, examples, doc tests)"
# The whole workspace with one set of features: the NAT lab finds the
# relay probe (a test binary of mesh-server-bin) built with these flags, so
# nothing is built twice; excluding packages here would change the features
# and make the lab rebuild the workspace.
cargo test --workspace --all-features --no-fail-fast

step "the binaries, libraries, examples and benchmarks the later steps use (not run here)"
# With the test step's packages and features, so nothing is compiled twice:
# a narrower -p or another feature set would rebuild mesh-core and its
# dependencies for each step (minutes each on 2 cores). The bindings' library
# (libmesh_ffi.so) carries the server's features too; the client builds are
# checked apart below.
workspace_build=(--workspace --all-features --lib --bins --examples --benches)
cargo build -q "${workspace_build[@]}"

step "mesh-core's line coverage: its own tests and the server's, in one instrumented build (cargo-llvm-cov; the seed's target is 80%)"
# mesh-core's unit, conformance and Pair tests and mesh-server-bin's
# integration tests (real server, real sockets) run again, instrumented,
# for mesh-core's line coverage. The summary counts mesh-core's files only: the total
# and the least covered ones; the full report: cargo llvm-cov report --html.
cov_start=$(date +%s)
cargo_llvm_cov_version=0.9.1
if [ "$(cargo llvm-cov --version 2>/dev/null || true)" != "cargo-llvm-cov $cargo_llvm_cov_version" ]; then
  cargo install -q cargo-llvm-cov --version "$cargo_llvm_cov_version" --locked
fi
# Counts from an earlier run in the same target folder must not add up.
rm -f "$target_dir"/llvm-cov-target/*.profraw
cargo llvm-cov --no-report -p mesh-core -p mesh-server-bin --all-features --no-fail-fast
cargo llvm-cov report -p mesh-core -p mesh-server-bin --summary-only >"$target_dir/coverage-summary.txt"
python3 scripts/coverage_summary.py "$target_dir/coverage-summary.txt"
echo "coverage step took $(( $(date +%s) - cov_start )) s"

step "fuzz targets (cargo-fuzz, nightly): a fixed number of runs each over the committed corpus"
# The image's nightly toolchain is there for cargo-fuzz; fuzz/ is a workspace
# of its own, so nothing above builds it. Fixed run counts (never a time
# limit), so the step's time is known: about 25 s of fuzzing per target on
# a 2-core machine, the build on top; see fuzz/README.md.
fuzz_start=$(date +%s)
cargo_fuzz_version=0.13.2
if [ "$(cargo +nightly fuzz --version 2>/dev/null || true)" != "cargo-fuzz $cargo_fuzz_version" ]; then
  cargo +nightly install -q cargo-fuzz --version "$cargo_fuzz_version" --locked
fi
fuzz_runs="ws_client_frame:800000 client_server_frame:25000 http_body:800000 p2p_frame:400000 folder_manifest:400000 token:80000"
for target in $(cargo +nightly fuzz list); do
  case " $fuzz_runs " in
    *" $target:"*) ;;
    *) echo "fuzz target $target has no run count in scripts/test.sh" >&2; exit 1 ;;
  esac
done
# -a: debug assertions and overflow checks.
cargo +nightly fuzz build -a --target-dir "$target_dir/fuzz"
echo "fuzz build took $(( $(date +%s) - fuzz_start )) s"
fuzz_scratch=$(mktemp -d)
for spec in $fuzz_runs; do
  target=${spec%%:*}
  runs=${spec#*:}
  mkdir -p "$fuzz_scratch/$target"
  target_start=$(date +%s)
  # New inputs go to the scratch folder; the committed corpus is only read.
  if ! cargo +nightly fuzz run -a --target-dir "$target_dir/fuzz" "$target" \
    "$fuzz_scratch/$target" "fuzz/corpus/$target" -- -runs="$runs" >"$fuzz_scratch/$target.log" 2>&1; then
    cat "$fuzz_scratch/$target.log" >&2
    echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  echo "$target: $(tail -n 1 "$fuzz_scratch/$target.log") ($(( $(date +%s) - target_start )) s)"
done
rm -rf "$fuzz_scratch"
echo "fuzzing took $(( $(date +%s) - fuzz_start )) s"

step "the embedding example runs (built above)"
"$target_dir/debug/examples/embedded_chat"

step "client builds compile no server code: no argon2, jsonwebtoken, ed25519-dalek or sled (an agent's p2p may verify tokens: no argon2, no sled)"
# Each set of features must build alone (so a feature gate cannot hide
# behind the workspace's unified features) and must not pull in what only a
# server needs. The wasm client (mesh-wasm) is checked the same way below.
server_only='^(argon2|jsonwebtoken|ed25519-dalek|sled) '
agent_forbidden='^(argon2|sled) '
for features in "" client native-client native-client,p2p; do
  cargo check -q -p mesh-core --no-default-features --features "$features"
  case "$features" in *p2p*) forbidden=$agent_forbidden ;; *) forbidden=$server_only ;; esac
  if cargo tree -q -p mesh-core --no-default-features --features "$features" -e normal --prefix none \
    | grep -E "$forbidden"; then
    echo "mesh-core with features '$features' compiles server-only crates (above)" >&2
    exit 1
  fi
  echo "features '$features': builds, no server-only crate"
done

step "sans-IO modules import no tokio, quinn or std::fs; no function of mesh-core/src over 100 lines"
# The rules of file transfers, NAT traversal, the relay, the engine and the
# client state machine are driven by thin async loops elsewhere; these
# files must stay free of I/O so that their tests need no sockets or files.
sans_io="mesh-core/src/p2p/transfer.rs mesh-core/src/p2p/traversal/bind.rs
  mesh-core/src/p2p/traversal/discovery.rs mesh-core/src/p2p/traversal/punch.rs
  mesh-core/src/relay/server.rs mesh-core/src/relay/stun.rs mesh-core/src/relay/wire.rs
  mesh-core/src/relay/grant.rs mesh-core/src/client/state.rs mesh-core/src/client/backoff.rs
  $(ls mesh-core/src/engine/*.rs mesh-core/src/protocol/*.rs)"
for f in $sans_io; do
  if grep -nE '\b(tokio|quinn)::|std::fs\b|^use (tokio|quinn)\b' "$f" | grep -vE '^[0-9]+:\s*//'; then
    echo "$f is sans-IO but does I/O (above)" >&2
    exit 1
  fi
done
echo "sans-IO: $(echo $sans_io | wc -w) files checked"
python3 scripts/longest_fn.py mesh-core/src 100

step "Python binding (uniffi, bindings/mesh-ffi): generate, then the chat test against a real server (plain, and once over HTTPS with a test CA)"
bindings_start=$(date +%s)
MESH_FFI_BUILD="${workspace_build[*]}" bindings/mesh-ffi/generate.sh
PYTHONPATH=bindings/mesh-ffi/generated/python MESH_SERVER_BIN="$target_dir/debug/mesh-server" \
  timeout 300 python3 -m unittest discover -s bindings/mesh-ffi/tests -v
echo "python binding took $(( $(date +%s) - bindings_start )) s"

step "Kotlin binding (uniffi): the chat test and the P2P transfers (direct, relayed) from one Kotlin main (kotlinc from npm, JNA from Debian)"
bindings_start=$(date +%s)
(cd bindings/mesh-ffi/tests/kotlin && npm ci --no-audit --no-fund --loglevel=error)
MESH_SERVER_BIN="$target_dir/debug/mesh-server" timeout 300 bindings/mesh-ffi/tests/kotlin/run.sh
echo "kotlin binding took $(( $(date +%s) - bindings_start )) s"

step "JavaScript binding (wasm-bindgen, bindings/mesh-wasm): wasm32 build; node --test (plain, and once over HTTPS with a test CA) and wasm-bindgen-test (Node, headless Chromium) against a real server"
bindings_start=$(date +%s)
if command -v rustup >/dev/null 2>&1; then
  rustup target add wasm32-unknown-unknown
fi
# wasm-bindgen-cli must match the wasm-bindgen crate exactly.
wasm_bindgen_version=$(sed -n '/^name = "wasm-bindgen"$/{n;s/^version = "\(.*\)"$/\1/p;}' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null || true)" != "wasm-bindgen $wasm_bindgen_version" ] \
  || [ "$(wasm-bindgen-test-runner --version 2>/dev/null || true)" != "wasm-bindgen-test-runner $wasm_bindgen_version" ]; then
  # No default features: no TLS; the test runner is given chromedriver, never downloads it.
  cargo install -q wasm-bindgen-cli --version "$wasm_bindgen_version" --no-default-features
fi
bindings/mesh-wasm/build.sh
cargo clippy -q -p mesh-wasm --target wasm32-unknown-unknown --all-targets -- -D warnings
# The wasm build must stay free of tokio's networking, quinn and every
# server-only crate (password hashing, token signing, sled).
if cargo tree -q -p mesh-wasm --target wasm32-unknown-unknown -e normal --prefix none \
  | grep -E '^(tokio|mio|quinn|sled|reqwest|tokio-tungstenite|argon2|jsonwebtoken|ed25519-dalek) '; then
  echo "mesh-wasm pulls in a native-only crate (above)" >&2
  exit 1
fi
(cd bindings/mesh-wasm/tests && npm ci --no-audit --no-fund --loglevel=error)
(cd bindings/mesh-wasm/tests && MESH_SERVER_BIN="$target_dir/debug/mesh-server" \
  timeout 300 node --test --test-concurrency=1 .)
# wasm-bindgen-test: the pure parts in Node, the chat scenario in headless
# Chromium through Debian's chromedriver.
MESH_SERVER_BIN="$target_dir/debug/mesh-server" CHROMEDRIVER=/usr/bin/chromedriver \
  timeout 600 bindings/mesh-wasm/test.sh
echo "javascript binding took $(( $(date +%s) - bindings_start )) s"

step "web client in a real browser (web-tests/, Chromium + playwright-core)"
if [ "${MESH_SKIP_BROWSER:-}" = 1 ]; then
  echo "skipped (MESH_SKIP_BROWSER=1)"
else
  # Browsers are never downloaded by npm; Debian's Chromium is the one we drive.
  (cd web-tests && npm ci --no-audit --no-fund --loglevel=error)
  browser_start=$(date +%s)
  (cd web-tests && MESH_SERVER_BIN="$target_dir/debug/mesh-server" timeout 300 node --test --test-concurrency=1 tests/)
  echo "browser suite took $(( $(date +%s) - browser_start )) s; screenshots in target/screenshots/"
fi

step "browser lab: a call between two NATed homes through TURN (network namespaces, coturn, Chromium; needs root)"
if [ "${MESH_SKIP_BROWSER:-}" = 1 ]; then
  echo "skipped (MESH_SKIP_BROWSER=1)"
else
  # run.sh prints its own time; it fails without root under CI=true.
  MESH_SERVER_BIN="$target_dir/debug/mesh-server" web-tests/lab/run.sh
fi

step "P2P NAT lab: mesh agents behind NAT routers (network namespaces; direct, hole punched, relayed over UDP and TCP; needs root)"
# The real binaries, built above. run.sh prints each scenario's path and
# time and its own total; it fails without root under CI=true.
MESH_BIN="$target_dir/debug/mesh" MESH_SERVER_BIN="$target_dir/debug/mesh-server" \
  timeout 600 mesh-cli/tests/nat-lab/run.sh

echo
echo "all checks passed"

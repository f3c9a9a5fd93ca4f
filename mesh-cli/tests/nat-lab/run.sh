#!/usr/bin/env bash
# The P2P NAT lab (issue 12): the real `mesh` agents, each in its own network
# namespace behind its own Linux NAT router namespace, send 32 MiB files,
# a folder and a terminal to each other; mesh-server (HTTP + UDP on one
# port) runs in a "public" namespace. See README.md next to this file.
#
#   hA  (10.1.0.2) --+
#                    +-- rA (MASQUERADE, 198.51.100.2) -----------+
#   hA2 (10.1.0.3) --+                                            |
#   hB  (10.2.0.2) ----- rB (MASQUERADE, 203.0.113.2) ------------+-- pub (192.0.2.1: mesh-server)
#   hC  (10.3.0.2) ----- rC (MASQUERADE --random-fully, 203.0.113.130) --+
#
# Documentation-only addresses (RFC 5737) stand for the internet; every
# NAT/DROP rule lives inside a lab namespace and nothing is sent to a lab
# address from the root namespace; the namespaces go away on exit, failure
# included. Needs root (under CI=true it fails without it instead of
# skipping).
#
# Environment:
#   MESH_BIN, MESH_SERVER_BIN   the binaries (default: target/debug of this checkout)
#   MESH_LAB_NO_PATH=1          dry run against binaries without issue 12: a missing
#                               "path" field is tolerated (never the default)
#   MESH_LAB_TOPOLOGY_ONLY=1    build and check the topology, then stop (no binaries)
#   MESH_LAB_PUNCH_STUDY=1      also run the conntrack tuple-clash study (README.md)
#   MESH_LAB_SCENARIOS="1 2 7"  run only these scenarios (default: all)
#   MESH_LAB_KEEP=1             keep the scratch folder (logs) after the run
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
start=$(date +%s)

if [ "$(id -u)" != 0 ]; then
  if [ "${CI:-}" = true ]; then echo "the NAT lab needs root (network namespaces)" >&2; exit 1; fi
  echo "SKIPPED: the NAT lab needs root (network namespaces)"; exit 0
fi
for tool in ip iptables conntrack sysctl ping python3 cmp timeout; do
  command -v "$tool" >/dev/null || { echo "the NAT lab needs $tool (scripts/test.sh installs it)" >&2; exit 1; }
done
MESH_BIN=$(realpath "${MESH_BIN:-$repo/target/debug/mesh}")
MESH_SERVER_BIN=$(realpath "${MESH_SERVER_BIN:-$repo/target/debug/mesh-server}")
if [ "${MESH_LAB_TOPOLOGY_ONLY:-}" != 1 ]; then
  for bin in "$MESH_BIN" "$MESH_SERVER_BIN"; do
    [ -x "$bin" ] || { echo "missing binary $bin (cargo build -p mesh-cli -p mesh-server-bin)" >&2; exit 1; }
  done
fi

id=$$
PUB=nlpub$id RA=nlra$id RB=nlrb$id RC=nlrc$id HA=nlha$id HA2=nlhx$id HB=nlhb$id HC=nlhc$id
SERVER_IP=192.0.2.1 PORT=8000
WAN_A=198.51.100.2 WAN_B=203.0.113.2 WAN_C=203.0.113.130
work=$(mktemp -d /tmp/mesh-nat-lab.XXXXXX)
cleanup() {
  local rc=$?
  for ns in "$HA" "$HA2" "$HB" "$HC" "$RA" "$RB" "$RC" "$PUB"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  if [ "$rc" != 0 ] || [ "${MESH_LAB_KEEP:-}" = 1 ]; then
    echo "logs kept in $work"
  else
    rm -rf "$work"
  fi
  echo "NAT lab took $(( $(date +%s) - start )) s"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# ---------------------------------------------------------------- topology
for ns in "$PUB" "$RA" "$RB" "$RC" "$HA" "$HA2" "$HB" "$HC"; do
  ip netns add "$ns"
  nsx "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip -n "$ns" link set lo up
done
# veth pairs, created straight inside their namespaces (names carry the PID).
ip link add "pa$id" netns "$PUB" type veth peer name "wa$id" netns "$RA"
ip link add "pb$id" netns "$PUB" type veth peer name "wb$id" netns "$RB"
ip link add "pc$id" netns "$PUB" type veth peer name "wc$id" netns "$RC"
ip link add "la$id" netns "$RA" type veth peer name "ha$id" netns "$HA"
ip link add "lx$id" netns "$RA" type veth peer name "hx$id" netns "$HA2"
ip link add "lb$id" netns "$RB" type veth peer name "hb$id" netns "$HB"
ip link add "lc$id" netns "$RC" type veth peer name "hc$id" netns "$HC"

# Delay on the WAN links, both ways, so a punch resembles two home networks
# (and simultaneous open has a real window). netem is a kernel option some
# kernels lack (CONFIG_NET_SCH_NETEM); then nfq_delay.py stands in (below).
netem=yes
delay() { # ns dev
  if [ "$netem" = yes ] && ! nsx "$1" tc qdisc add dev "$2" root netem delay 10ms limit 10000 2>/dev/null; then
    netem=no
    echo "note: no netem on this kernel ($(uname -r))"
  fi
}

# The public side: the server's address, and a link to each router.
ip -n "$PUB" addr add "$SERVER_IP/32" dev lo
ip -n "$PUB" addr add 198.51.100.1/24 dev "pa$id"
ip -n "$PUB" addr add 203.0.113.1/25 dev "pb$id"
ip -n "$PUB" addr add 203.0.113.129/25 dev "pc$id"
for dev in "pa$id" "pb$id" "pc$id"; do ip -n "$PUB" link set "$dev" up; delay "$PUB" "$dev"; done
nsx "$PUB" sysctl -qw net.ipv4.ip_forward=1

router() { # ns wan wan_addr/len gateway lan lan_addr/len masquerade-options...
  local ns=$1 wan=$2 wan_addr=$3 gw=$4 lan=$5 lan_addr=$6
  shift 6
  ip -n "$ns" addr add "$wan_addr" dev "$wan"
  ip -n "$ns" addr add "$lan_addr" dev "$lan"
  ip -n "$ns" link set "$wan" up
  ip -n "$ns" link set "$lan" up
  ip -n "$ns" route add default via "$gw"
  delay "$ns" "$wan"
  nsx "$ns" sysctl -qw net.ipv4.ip_forward=1
  nsx "$ns" iptables -t nat -A POSTROUTING -o "$wan" -j MASQUERADE "$@"
  # Mappings go stale fast, as in real homes: 10 s UDP conntrack timeouts
  # (per network namespace; checked below).
  nsx "$ns" sysctl -qw net.netfilter.nf_conntrack_udp_timeout=10 net.netfilter.nf_conntrack_udp_timeout_stream=10
  # Byte counters for traffic to and from the server (no target: count only).
  nsx "$ns" iptables -N LABACCT
  nsx "$ns" iptables -A FORWARD -j LABACCT
  nsx "$ns" iptables -A LABACCT -d "$SERVER_IP"
  nsx "$ns" iptables -A LABACCT -s "$SERVER_IP"
}
# Router A's LAN is a bridge with two homes on it (the one-LAN scenario).
ip -n "$RA" link add "bra$id" type bridge
ip -n "$RA" link set "la$id" master "bra$id"
ip -n "$RA" link set "lx$id" master "bra$id"
ip -n "$RA" link set "la$id" up
ip -n "$RA" link set "lx$id" up
router "$RA" "wa$id" "$WAN_A/24" 198.51.100.1 "bra$id" 10.1.0.1/24
router "$RB" "wb$id" "$WAN_B/25" 203.0.113.1 "lb$id" 10.2.0.1/24
router "$RC" "wc$id" "$WAN_C/25" 203.0.113.129 "lc$id" 10.3.0.1/24 --random-fully

# Without netem, the same 20 ms one way (two 10 ms WAN links) for UDP
# between homes only, in pub's FORWARD chain (all it forwards is router to
# router; the server is local to pub): nfq_delay.py holds each packet in an
# NFQUEUE for 20 ms. Only the first 400 packets of a flow, which is where
# a punch is decided, so bulk transfers do not go through Python.
# MESH_LAB_NFQ_DELAY=0 turns it off.
if [ "$netem" = no ] && [ "${MESH_LAB_NFQ_DELAY:-1}" != 0 ]; then
  nsx "$PUB" python3 "$here/nfq_delay.py" 0 20 >"$work/nfq_delay.log" 2>&1 &
  disown
  for _ in $(seq 50); do grep -q "^nfq_delay: queue" "$work/nfq_delay.log" && break; sleep 0.1; done
  grep -q "^nfq_delay: queue" "$work/nfq_delay.log" || { cat "$work/nfq_delay.log" >&2; echo "FAIL: nfq_delay did not start" >&2; exit 1; }
  nsx "$PUB" iptables -A FORWARD -p udp -m connbytes --connbytes 0:400 --connbytes-dir both --connbytes-mode packets \
    -j NFQUEUE --queue-num 0 --queue-bypass
  netem="no; nfq_delay 20 ms one way on UDP between homes"
elif [ "$netem" = no ]; then
  echo "note: the links have no added delay (MESH_LAB_NFQ_DELAY=0)"
fi

home() { # ns dev addr gateway
  ip -n "$1" addr add "$3" dev "$2"
  ip -n "$1" link set "$2" up
  ip -n "$1" route add default via "$4"
}
home "$HA" "ha$id" 10.1.0.2/24 10.1.0.1
home "$HA2" "hx$id" 10.1.0.3/24 10.1.0.1
home "$HB" "hb$id" 10.2.0.2/24 10.2.0.1
home "$HC" "hc$id" 10.3.0.2/24 10.3.0.1

# ------------------------------------------------------- topology checks
fail() { echo "FAIL: $*" >&2; exit 1; }
wanted() { [ -z "${MESH_LAB_SCENARIOS:-}" ] || [[ " $MESH_LAB_SCENARIOS " == *" $1 "* ]]; }
for r in "$RA" "$RB" "$RC"; do
  for key in nf_conntrack_udp_timeout nf_conntrack_udp_timeout_stream; do
    v=$(nsx "$r" sysctl -n "net.netfilter.$key")
    [ "$v" = 10 ] || fail "$key is $v in $r, not 10"
  done
done
host_timeout=$(sysctl -n net.netfilter.nf_conntrack_udp_timeout 2>/dev/null || echo unknown)
[ "$host_timeout" != 10 ] || echo "note: the root namespace's UDP conntrack timeout is 10 s too (not changed by the lab?)"
for h in "$HA" "$HA2" "$HB" "$HC"; do
  nsx "$h" ping -c 1 -W 2 -q "$SERVER_IP" >/dev/null || fail "$h cannot ping the server through its NAT"
done
nsx "$HA" ping -c 1 -W 2 -q 10.1.0.3 >/dev/null || fail "hA cannot ping hA2 on its LAN"
nsx "$HA" ping -c 1 -W 2 -q "$WAN_B" >/dev/null || fail "hA cannot ping router B's public address"
nsx "$HA" ping -c 1 -W 2 -q 10.2.0.2 >/dev/null 2>&1 && fail "hA reaches hB's private address (no NAT?)"

# A tiny reflector in pub (what STUN tells an agent): the address and port
# each home's datagram arrives from. Port-preserving NATs keep the source
# port; rC (--random-fully) must not.
nsx "$PUB" python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("192.0.2.1", 3479))
while True:
    d, a = s.recvfrom(100); s.sendto(("%s:%d" % a).encode(), a)' 2>"$work/reflector.log" &
disown  # killed with its namespace on exit (no job-control noise)
reflect() { # ns local-port -> "ip:port" as the server sees it
  nsx "$1" python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1]))); s.settimeout(0.2)
for _ in range(25):
    s.sendto(b"?", ("192.0.2.1", 3479))
    try: print(s.recv(100).decode()); break
    except socket.timeout: pass' "$2"
}
for spec in "$HA:$WAN_A:same" "$HB:$WAN_B:same" "$HC:$WAN_C:random"; do
  IFS=: read -r h wan kind <<<"$spec"
  seen=$(reflect "$h" 40000)
  [ "${seen%:*}" = "$wan" ] || fail "$h is seen as '$seen', not from $wan"
  if [ "$kind" = same ]; then [ "${seen#*:}" = 40000 ] || fail "$h's NAT did not keep port 40000: $seen"
  else [ "${seen#*:}" != 40000 ] || fail "$h's NAT kept port 40000 despite --random-fully"; fi
  echo "topology: $h:40000 is seen by the server as $seen"
done

# Per-scenario toggles: rules inside the routers only, checked with a probe
# that must be counted as dropped.
drops() { nsx "$1" iptables -L FORWARD -v -x -n | awk '$3 == "DROP" && $4 == "17" { n += $1 } END { print n + 0 }'; }
probe_dropped() { # router home dst-ip
  local before after
  before=$(drops "$1")
  nsx "$2" bash -c "echo probe > /dev/udp/$3/9"
  after=$(drops "$1")
  [ "$after" -gt "$before" ] || fail "$1 did not drop UDP from $2 to $3"
}
block_p2p_udp() { # UDP between the public addresses of routers A and B, both ways
  nsx "$RA" iptables -I FORWARD -p udp -d "$WAN_B" -j DROP
  nsx "$RA" iptables -I FORWARD -p udp -s "$WAN_B" -j DROP
  nsx "$RB" iptables -I FORWARD -p udp -d "$WAN_A" -j DROP
  nsx "$RB" iptables -I FORWARD -p udp -s "$WAN_A" -j DROP
  probe_dropped "$RA" "$HA" "$WAN_B"
  probe_dropped "$RB" "$HB" "$WAN_A"
}
block_server_udp() {
  for r in "$RA" "$RB"; do nsx "$r" iptables -I FORWARD -p udp -d "$SERVER_IP" -j DROP; done
  probe_dropped "$RA" "$HA" "$SERVER_IP"
  probe_dropped "$RB" "$HB" "$SERVER_IP"
}
unblock() {
  for r in "$RA" "$RB"; do
    for ip in "$WAN_A" "$WAN_B" "$SERVER_IP"; do
      while nsx "$r" iptables -D FORWARD -p udp -d "$ip" -j DROP 2>/dev/null; do :; done
      while nsx "$r" iptables -D FORWARD -p udp -s "$ip" -j DROP 2>/dev/null; do :; done
    done
  done
}
block_p2p_udp; block_server_udp; unblock
[ "$(drops "$RA")$(nsx "$RA" iptables -S FORWARD | grep -c DROP || true)" != "" ]
nsx "$RA" iptables -S FORWARD | grep -q DROP && fail "DROP rules left in router A"
echo "topology: NAT, ping, reflector, 10 s UDP timeouts and DROP probes ok (netem: $netem) in $(( $(date +%s) - start )) s"

# -------------------------------------------- the tuple-clash punch study
if [ "${MESH_LAB_PUNCH_STUDY:-}" = 1 ]; then
  punch() { # label a-offset b-offset [low-ttl-until-offset]: hA:41000 <-> hB:41000, 2 s each
    local t0 ra rb low=""
    t0=$(python3 -c 'import time; print(time.time() + 1.5)')
    [ -z "${4:-}" ] || low=$(python3 -c "print($t0 + $4)")
    nsx "$HA" python3 "$here/punch.py" 41000 "$WAN_B" 41000 "$(python3 -c "print($t0 + $2)")" 2 $low >"$work/punch-a" &
    local pa=$!
    nsx "$HB" python3 "$here/punch.py" 41000 "$WAN_A" 41000 "$(python3 -c "print($t0 + $3)")" 2 $low >"$work/punch-b" &
    wait "$pa" $!
    ra=$(cat "$work/punch-a") rb=$(cat "$work/punch-b")
    echo "punch study ($1): A $ra"
    echo "punch study ($1): B $rb"
    for r in "$RA" "$RB"; do
      echo "punch study ($1): $r conntrack: $(nsx "$r" conntrack -L -p udp 2>/dev/null | grep -E 'port=41000' | sed -E 's/ +/ /g; s/ mark=0 use=1//' | tr '\n' ';')"
    done
  }
  flush() { for r in "$RA" "$RB"; do nsx "$r" conntrack -F >/dev/null 2>&1 || true; done; }
  flush; punch "a: simultaneous" 0 0
  flush; punch "b: B sends 500 ms before A" 0.5 0
  punch "b, both go on sending (entries still live)" 0 0
  echo "punch study: 12 s of silence (the routers' UDP timeout is 10 s)"
  sleep 12
  punch "b, after the silence, TTL 2 for the first 300 ms" 0 0 0.3
  flush; punch "c: B 500 ms early, TTL 2 until 200 ms after A starts" 0.5 0 0.7
fi

if [ "${MESH_LAB_TOPOLOGY_ONLY:-}" = 1 ]; then exit 0; fi

# ----------------------------------------------------- server and agents
mkdir -p "$work/data"
# Session grants live 20 s here (180 s by default) so that scenario 8 can
# present an expired one; every transfer connects within a few seconds of
# asking for its session.
GRANT_TTL=20
nsx "$PUB" "$MESH_SERVER_BIN" --listen "$SERVER_IP:$PORT" --data "$work/data" \
  --p2p-session-ttl-secs "$GRANT_TTL" >"$work/server.log" 2>&1 &
disown
for _ in $(seq 100); do
  nsx "$PUB" bash -c "exec 3<>/dev/tcp/$SERVER_IP/$PORT" 2>/dev/null && break
  sleep 0.1
done
nsx "$PUB" bash -c "exec 3<>/dev/tcp/$SERVER_IP/$PORT" 2>/dev/null || { cat "$work/server.log" >&2; fail "mesh-server did not start"; }
# Its pid (the job above is a shell running `ip netns exec`), for its memory.
server_pid=$(for pid in $(ip netns pids "$PUB"); do
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mesh-server ] && echo "$pid"; done | head -n 1)
[ -n "$server_pid" ] || fail "mesh-server's pid not found in $PUB"

# The relay probe (scenario 8): two ignored tests of mesh-server-bin's
# tests/relay.rs, run inside hB against this server. Located through cargo
# with the test script's own flags (--workspace --all-features), so nothing
# is rebuilt; MESH_RELAY_PROBE overrides.
probe=${MESH_RELAY_PROBE:-}
if [ -z "$probe" ] && wanted 8; then
  probe=$(cd "$repo" && cargo test -q --workspace --all-features --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
for line in sys.stdin:
    j = json.loads(line)
    t = j.get("target") or {}
    if j.get("executable") and t.get("name") == "relay" and "test" in t.get("kind", []) and "mesh-server-bin" in j.get("package_id", ""):
        print(j["executable"])')
fi
run_probe() { # test-name log
  nsx "$HB" env MESH_LAB_SERVER="$SERVER_IP:$PORT" MESH_LAB_GRANT="$work/grant.json" \
    "$probe" --ignored --exact "$1" --nocapture >"$2" 2>&1
}
if wanted 8; then
  [ -x "$probe" ] || fail "the relay probe (mesh-server-bin's relay test binary) was not found; build it with cargo test --workspace --all-features --no-run"
  run_probe lab_prepare_a_grant_that_will_expire "$work/probe-prepare.log" \
    || { cat "$work/probe-prepare.log" >&2; fail "the relay probe could not prepare a grant"; }
  probe_prepared=$(date +%s)
fi

mesh() { # ns user args... : the real binary, in a home, with that user's config folder
  local ns=$1 user=$2
  shift 2
  nsx "$ns" env MESH_CONFIG_DIR="$work/cfg-$user" MESH_SERVER="http://$SERVER_IP:$PORT" "$MESH_BIN" "$@"
}
# alice sends from hA; bob (hA2), carol (hB) and dave (hC) run agents.
for spec in "$HA:alice" "$HA2:bob" "$HB:carol" "$HC:dave"; do
  ns=${spec%%:*} user=${spec#*:}
  echo "lab-password-$user" | mesh "$ns" "$user" --json register "$user" --password-stdin >/dev/null \
    || fail "register $user"
done
mesh "$HA" alice --json room create lab >/dev/null || fail "room create"
for spec in "$HA2:bob" "$HB:carol" "$HC:dave"; do
  mesh "${spec%%:*}" "${spec#*:}" --json room join lab >/dev/null || fail "room join ${spec#*:}"
done

# Waits for a JSON line with "event": EVENT (and containing TEXT) in FILE
# (the agents' --json output); no fixed sleeps, a bound only.
wait_event() { # file event seconds [text]
  local deadline=$(( $(date +%s) + $3 ))
  until grep "\"event\":\"$2\"" "$1" 2>/dev/null | grep -qF -- "${4:-}"; do
    [ "$(date +%s)" -lt "$deadline" ] || { cat "$1" >&2; fail "no $2 event in $1 within $3 s"; }
    sleep 0.1
  done
}
for spec in "$HA2:bob" "$HB:carol" "$HC:dave"; do
  ns=${spec%%:*} user=${spec#*:}
  mkdir -p "$work/inbox-$user"
  T=0 mesh "$ns" "$user" --json agent --receive-dir "$work/inbox-$user" >"$work/agent-$user.log" 2>&1 &
  disown
done
for user in bob carol dave; do wait_event "$work/agent-$user.log" ready 30; done
agents_up=$(date +%s)
echo "agents ready (bob on hA2, carol on hB, dave on hC) at +$(( agents_up - start )) s"

head -c 32M /dev/urandom >"$work/big.bin"
mkdir -p "$work/folder/sub/deeper"
head -c 3M /dev/urandom >"$work/folder/a.bin"
head -c 1M /dev/urandom >"$work/folder/sub/b.bin"
echo "nested text" >"$work/folder/sub/deeper/c.txt"
head -c 200K /dev/urandom >"$work/folder/sub/deeper/d.bin"

# Mappings go stale in real homes: every transfer starts at least 30 s after
# the agents came up (3x the routers' 10 s UDP timeout), so anything the
# agents opened at start-up has expired unless they keep it alive. This is
# the lab's one deliberate wait, shared by all scenarios (started once, up
# front), not 30 s per scenario.
stale_wait() {
  local left=$(( agents_up + 30 - $(date +%s) ))
  if [ "$left" -gt 0 ]; then echo "waiting ${left} s so the NAT mappings go stale (30 s after the agents came up)"; sleep "$left"; fi
}

# ---------------------------------------------------------------- checks
# What a send's --json output says: the path it took (the last "path"
# field equal to "direct" or "relay" in any line; "missing" when there is
# none) and the seconds from asking for the session to the peer's answer
# over that path (the last "connect_seconds"; "?" when absent).
send_fields() {
  python3 -c '
import json, sys
path, secs = "missing", "?"
for line in open(sys.argv[1]):
    try: v = json.loads(line)
    except ValueError: continue
    if not isinstance(v, dict): continue
    if v.get("path") in ("direct", "relay"): path = v["path"]
    if "connect_seconds" in v: secs = "%.3f" % v["connect_seconds"]
print(path, secs)' "$1"
}
server_bytes() { # router: bytes it forwarded to and from the server since the last reset
  nsx "$1" iptables -L LABACCT -v -x -n | awk 'NR > 2 { n += $2 } END { print n + 0 }'
}
results=()
direct_ok=0 direct_n=0 relay_ok=0 relay_n=0 failed=0
record() { # scenario expected status detail seconds
  local line
  line=$(printf '%-34s expected %-6s %-4s %s  %s' "$1" "$2" "$3" "$5" "$4")
  echo "$line"
  results+=("$line")
  if [ "$2" = direct ]; then direct_n=$((direct_n + 1)); else relay_n=$((relay_n + 1)); fi
  if [ "$3" = ok ]; then
    if [ "$2" = direct ]; then direct_ok=$((direct_ok + 1)); else relay_ok=$((relay_ok + 1)); fi
  else
    failed=$((failed + 1))
  fi
}
# Judges a finished send: exit status, path, and the bytes through router A
# to the server (a relayed 32 MiB must cross it; a direct one must not).
judge() { # name expected rc out seconds extra-check-result min-relay-bytes
  local name=$1 want=$2 rc=$3 out=$4 secs=$5 extra=$6 min=$7 got connect bytes
  read -r got connect < <(send_fields "$out")
  secs="$secs s, connected in $connect"
  bytes=$(server_bytes "$RA")
  if [ "$rc" != 0 ]; then
    record "$name" "$want" FAIL "exit $rc: $(grep -h error "$out" | tail -n 1 | cut -c1-200)" "$secs"
  elif [ "$extra" != ok ]; then
    record "$name" "$want" FAIL "$extra" "$secs"
  elif [ "$got" = missing ] && [ "${MESH_LAB_NO_PATH:-}" = 1 ]; then
    record "$name" "$want" ok "no path field (MESH_LAB_NO_PATH=1); server bytes via rA $bytes" "$secs"
  elif [ "$got" != "$want" ]; then
    record "$name" "$want" FAIL "path $got; server bytes via rA $bytes" "$secs"
  elif [ "$want" = direct ] && [ "$bytes" -gt $((4 * 1024 * 1024)) ]; then
    record "$name" "$want" FAIL "says direct but $bytes bytes went via the server" "$secs"
  elif [ "$want" = relay ] && [ "$bytes" -lt "$min" ]; then
    record "$name" "$want" FAIL "says relay but only $bytes bytes went via the server" "$secs"
  else
    record "$name" "$want" ok "path $got; server bytes via rA $bytes" "$secs"
  fi
}
send_file() { # scenario-name expected peer peer-user [send-file options...]
  local name=$1 want=$2 peer=$3 n=$4 rc=0 t0 secs extra=ok
  shift 4
  stale_wait
  for r in "$RA" "$RB" "$RC"; do nsx "$r" iptables -Z LABACCT; done
  t0=$(date +%s.%N)
  T=90 mesh "$HA" alice --json send-file "$peer" "$work/big.bin" --name "s$n.bin" "$@" >"$work/send-$n.out" 2>&1 || rc=$?
  secs=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  if [ "$rc" = 0 ]; then
    wait_event "$work/agent-$peer.log" received 10 "s$n.bin"
    cmp -s "$work/big.bin" "$work/inbox-$peer/s$n.bin" || extra="received file differs from the sent one"
  fi
  judge "$name" "$want" "$rc" "$work/send-$n.out" "$secs" "$extra" $((32 * 1024 * 1024))
}

# --------------------------------------------------------------- scenarios
if wanted 1; then send_file "1 one LAN (hA -> hA2)" direct bob 1; fi
if wanted 2; then send_file "2 two MASQUERADE NATs (hA -> hB)" direct carol 2; fi
if wanted 3; then send_file "3 random-port NAT (hA -> hC)" relay dave 3; fi
if wanted 4; then
  block_p2p_udp
  send_file "4 UDP dropped between NATs" relay carol 4
fi
if wanted 5; then
  block_p2p_udp; block_server_udp
  send_file "5 + UDP to server dropped (TCP)" relay carol 5
fi
unblock
if wanted 6; then
  # A folder, through the relay (hC's NAT maps ports at random).
  stale_wait
  for r in "$RA" "$RB" "$RC"; do nsx "$r" iptables -Z LABACCT; done
  rc=0 t0=$(date +%s.%N) extra=ok
  T=90 mesh "$HA" alice --json send-folder dave "$work/folder" >"$work/send-6f.out" 2>&1 || rc=$?
  secs=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  if [ "$rc" = 0 ]; then
    wait_event "$work/agent-dave.log" received 10 '"kind":"folder"'
    diff -r "$work/folder" "$work/inbox-dave/folder" >/dev/null 2>&1 || extra="received folder differs"
  fi
  judge "6 folder via relay (hA -> hC)" relay "$rc" "$work/send-6f.out" "$secs" "$extra" $((4 * 1024 * 1024))

  # A terminal running `echo lab-ok`, shared with dave's agent through the relay.
  for r in "$RA" "$RB" "$RC"; do nsx "$r" iptables -Z LABACCT; done
  rc=0 t0=$(date +%s.%N) extra=ok
  T=60 mesh "$HA" alice --json share-terminal dave -- sh -c 'echo lab-ok' >"$work/send-6t.out" 2>&1 || rc=$?
  secs=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  if [ "$rc" = 0 ]; then
    wait_event "$work/agent-dave.log" terminal_exit 10
    grep '"event":"terminal_output"' "$work/agent-dave.log" | grep -q lab-ok || extra="the agent did not show lab-ok"
  fi
  judge "6 terminal via relay (hA -> hC)" relay "$rc" "$work/send-6t.out" "$secs" "$extra" 0
fi
if wanted 7; then
  # Stale and gone: the routers forget every mapping (as after a router
  # restart); still direct. -F drops the agents' TCP (WebSocket) entries
  # too: the next packet from the server to a home meets a router that no
  # longer knows the connection and answers with a RST, so the agent
  # reconnects (a new peer id). Make that happen at once and the same way
  # every run: a chat message makes the server write to every agent's
  # connection; then wait for carol's agent to be back (its heartbeat, at
  # most 15 s, finds the connection gone).
  reconnects=$(grep -c '"event":"reconnected"' "$work/agent-carol.log" || true)
  for r in "$RA" "$RB" "$RC"; do nsx "$r" conntrack -F >/dev/null 2>&1; done
  t7=$(date +%s)
  mesh "$HA" alice --json send lab "routers flushed their conntrack tables" >/dev/null || fail "chat message"
  deadline=$(( $(date +%s) + 60 ))
  until [ "$(grep -c '"event":"reconnected"' "$work/agent-carol.log" || true)" -gt "$reconnects" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "carol's agent did not reconnect within 60 s of conntrack -F"
    sleep 0.2
  done
  echo "after conntrack -F: carol's agent reconnected in $(( $(date +%s) - t7 )) s"
  send_file "7 scenario 2 after conntrack -F" direct carol 7
fi

if wanted 8; then
  # Bad input at the relay, from behind hB's NAT: an expired grant (the
  # one prepared at start-up), a token for another session, a key for
  # another session, a third party holding a token; then a flood of
  # garbage and bogus BINDs. The server's memory before and after.
  wait_s=$(( probe_prepared + GRANT_TTL + 2 - $(date +%s) ))
  if [ "$wait_s" -gt 0 ]; then echo "waiting ${wait_s} s for the prepared grant to expire"; sleep "$wait_s"; fi
  rss_before=$(awk '/^VmRSS/ { print $2 }' "/proc/$server_pid/status")
  t0=$(date +%s.%N) rc=0
  run_probe lab_the_relay_refuses_foreign_and_expired_tokens "$work/probe-check.log" || rc=$?
  secs=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  rss_after=$(awk '/^VmRSS/ { print $2 }' "/proc/$server_pid/status")
  growth=$(( (rss_after - rss_before) / 1024 ))
  line=$(printf '%-34s expected %-6s %-4s %s s  %s' "8 bad tokens and a flood (hB)" refuse \
    "$([ "$rc" = 0 ] && [ "$growth" -lt 64 ] && echo ok || echo FAIL)" "$secs" \
    "server RSS ${rss_before} -> ${rss_after} KiB; $(grep -h -E '^(refused|flood)' "$work/probe-check.log" | tr '\n' ' ')")
  echo "$line"
  results+=("$line")
  if [ "$rc" != 0 ] || [ "$growth" -ge 64 ]; then
    tail -n 30 "$work/probe-check.log" >&2
    failed=$((failed + 1))
  fi
fi

echo
echo "== NAT lab results"
for line in "${results[@]}"; do echo "$line"; done
echo "direct paths: $direct_ok/$direct_n punchable scenarios; relayed: $relay_ok/$relay_n relay scenarios"
if [ "$failed" != 0 ]; then
  echo "$failed scenario(s) failed; logs in $work (agents: agent-*.log, sends: send-*.out, server.log)" >&2
  exit 1
fi

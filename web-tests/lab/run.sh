#!/usr/bin/env bash
# The browser lab (issue 11): two browsers, each in its own network
# namespace behind its own NAT router namespace, call each other through
# TURN; mesh-server and coturn run in a "public" namespace.
#
#   home A (10.1.0.2) -- router A (NAT, 198.51.100.2) --+
#                                                       +-- public (192.0.2.1: mesh-server, coturn)
#   home B (10.2.0.2) -- router B (NAT, 203.0.113.2) --+
#
# UDP between the two homes is dropped in the routers, so only the relay
# carries media. Documentation-only addresses (RFC 5737) stand for the
# internet; nothing outside the namespaces is touched, and the namespaces
# go away on exit, failure included. Needs root (under CI=true it fails
# without it instead of skipping).
set -euo pipefail
cd "$(dirname "$0")"
start=$(date +%s)

if [ "$(id -u)" != 0 ]; then
  if [ "${CI:-}" = true ]; then echo "the browser lab needs root (network namespaces)" >&2; exit 1; fi
  echo "SKIPPED: the browser lab needs root (network namespaces)"; exit 0
fi

id=$$
PUB=mlpub$id RA=mlra$id RB=mlrb$id HA=mlha$id HB=mlhb$id
cleanup() {
  for ns in "$HA" "$HB" "$RA" "$RB" "$PUB"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  echo "browser lab took $(( $(date +%s) - start )) s"
}
trap cleanup EXIT INT TERM

for ns in "$PUB" "$RA" "$RB" "$HA" "$HB"; do
  ip netns add "$ns"
  # IPv4 only: IPv6 duplicate-address detection finishing on a veth a
  # second after it comes up is a "network change" to Chromium, which then
  # aborts a navigation in flight (ERR_NETWORK_CHANGED).
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip -n "$ns" link set lo up
done
# veth pairs, created straight inside their namespaces (names carry the PID).
ip link add "pa$id" netns "$PUB" type veth peer name "wa$id" netns "$RA"
ip link add "pb$id" netns "$PUB" type veth peer name "wb$id" netns "$RB"
ip link add "la$id" netns "$RA" type veth peer name "ha$id" netns "$HA"
ip link add "lb$id" netns "$RB" type veth peer name "hb$id" netns "$HB"

# The public side: the server's address, and a route to each router.
ip -n "$PUB" addr add 192.0.2.1/32 dev lo
ip -n "$PUB" addr add 198.51.100.1/24 dev "pa$id"
ip -n "$PUB" addr add 203.0.113.1/24 dev "pb$id"
ip -n "$PUB" link set "pa$id" up
ip -n "$PUB" link set "pb$id" up
ip netns exec "$PUB" sysctl -qw net.ipv4.ip_forward=1

router() { # ns wan wan_addr lan lan_addr drop_udp_to
  ip -n "$1" addr add "$3" dev "$2"
  ip -n "$1" addr add "$5" dev "$4"
  ip -n "$1" link set "$2" up
  ip -n "$1" link set "$4" up
  ip -n "$1" route add default via "${3%.*}.1"
  ip netns exec "$1" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$1" iptables -t nat -A POSTROUTING -o "$2" -j MASQUERADE
  ip netns exec "$1" iptables -A FORWARD -p udp -d "$6" -j DROP
}
router "$RA" "wa$id" 198.51.100.2/24 "la$id" 10.1.0.1/24 203.0.113.0/24
router "$RB" "wb$id" 203.0.113.2/24 "lb$id" 10.2.0.1/24 198.51.100.0/24

home() { # ns dev addr gateway
  ip -n "$1" addr add "$3" dev "$2"
  ip -n "$1" link set "$2" up
  ip -n "$1" route add default via "$4"
}
home "$HA" "ha$id" 10.1.0.2/24 10.1.0.1
home "$HB" "hb$id" 10.2.0.2/24 10.2.0.1

# The DROP rules work: a datagram from home A to home B's public address
# is counted by router A's rule (and never arrives).
drops() { ip netns exec "$1" iptables -L FORWARD -v -x -n | awk '$3 == "DROP" && $4 == "17" { n += $1 } END { print n + 0 }'; }
before=$(drops "$RA")
ip netns exec "$HA" bash -c 'echo probe > /dev/udp/203.0.113.2/9'
after=$(drops "$RA")
if [ "$after" -le "$before" ]; then echo "router A did not drop UDP to home B" >&2; exit 1; fi

LAB_PUB=$PUB LAB_HOME_A=$HA LAB_HOME_B=$HB LAB_ROUTER_A=$RA LAB_ROUTER_B=$RB LAB_SERVER_IP=192.0.2.1 \
  timeout 150 node --test --test-concurrency=1 turn-lab.test.js

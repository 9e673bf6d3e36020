#!/usr/bin/env bash
# A four-namespace plant network for tests (needs root):
#
#   IT  10.77.1.2 ──┐
#                   ├── GW 10.77.1.1 / 10.77.2.1 / 10.77.3.1 ── 10.77.3.2 PLC
#   HMI 10.77.2.2 ──┘
#
# The PLC's only link is to GW, and GW forwards nothing (forwarding off, and an nftables forward
# chain that drops, in GW's own namespace): the PLC is reachable only by processes running in GW.
# IT and HMI know a route to the PLC's subnet through GW, as an attacker would try; it leads nowhere.
#
#   tests/netns/lab.sh up PREFIX     create PREFIX-it, PREFIX-hmi, PREFIX-gw, PREFIX-plc
#   tests/netns/lab.sh down PREFIX   delete them (and their veth pairs); never fails
#
# Nothing here touches the host's own namespace beyond creating and deleting these namespaces.
set -euo pipefail

cmd=${1:?usage: lab.sh up|down PREFIX}
prefix=${2:?usage: lab.sh up|down PREFIX}

down() {
  for ns in it hmi gw plc; do
    ip netns del "$prefix-$ns" 2>/dev/null || true
  done
}

link() {  # link NS_A ADDR_A NS_B ADDR_B: a veth pair between two namespaces, both ends up
  local a=$1 addr_a=$2 b=$3 addr_b=$4
  ip link add "v-$prefix-$a-$b" netns "$prefix-$a" type veth peer name "v-$prefix-$b-$a" netns "$prefix-$b"
  ip -n "$prefix-$a" addr add "$addr_a/24" dev "v-$prefix-$a-$b"
  ip -n "$prefix-$b" addr add "$addr_b/24" dev "v-$prefix-$b-$a"
  ip -n "$prefix-$a" link set "v-$prefix-$a-$b" up
  ip -n "$prefix-$b" link set "v-$prefix-$b-$a" up
}

up() {
  down
  trap 'down' ERR
  for ns in it hmi gw plc; do
    ip netns add "$prefix-$ns"
    ip -n "$prefix-$ns" link set lo up
  done
  link gw 10.77.1.1 it 10.77.1.2
  link gw 10.77.2.1 hmi 10.77.2.2
  link gw 10.77.3.1 plc 10.77.3.2
  ip -n "$prefix-it" route add 10.77.3.0/24 via 10.77.1.1
  ip -n "$prefix-hmi" route add 10.77.3.0/24 via 10.77.2.1
  ip -n "$prefix-plc" route add default via 10.77.3.1
  ip netns exec "$prefix-gw" sysctl -q -w net.ipv4.ip_forward=0
  ip netns exec "$prefix-gw" nft -f - <<'EOF'
table inet ztgate_lab {
  chain forward {
    type filter hook forward priority 0; policy drop;
  }
}
EOF
  trap - ERR
}

# Veth names are at most 15 characters: keep PREFIX short (e.g. "zt1234").
case "$cmd" in
  up) up ;;
  down) down ;;
  *) echo "usage: lab.sh up|down PREFIX" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# make demo: filter real traffic in a private network namespace with
# scripts/examples/print_and_accept.lua, then clean everything up.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
	echo "demo: run as root (it creates a network namespace and iptables rules)" >&2
	exit 1
fi

ns="nfqlua-demo-$$"
queue=1
pid=""

cleanup() {
	trap - EXIT INT TERM
	if [ -n "$pid" ]; then
		kill -TERM "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted, cleaning up"; exit 130' INT TERM

in_ns() { ip netns exec "$ns" "$@"; }

echo "== creating network namespace $ns (only lo, 127.0.0.1 and ::1)"
ip netns add "$ns"
in_ns ip link set lo up

echo "== iptables: UDP to port 9999 and TCP to port 9998 go to NFQUEUE $queue"
in_ns iptables -A OUTPUT -o lo -p udp --dport 9999 -j NFQUEUE --queue-num "$queue"
in_ns iptables -A OUTPUT -o lo -p tcp --dport 9998 -j NFQUEUE --queue-num "$queue"
in_ns ip6tables -A OUTPUT -o lo -p udp --dport 9999 -j NFQUEUE --queue-num "$queue"

echo "== starting: nfqlua scripts/examples/print_and_accept.lua --queue $queue"
echo "== the script prints one line per packet:"
# Not through in_ns: $! must be nfqlua itself, so that the signal reaches it.
ip netns exec "$ns" ./nfqlua scripts/examples/print_and_accept.lua --queue "$queue" \
	> >(sed -u 's/^/   /') 2>&1 &
pid=$!
# The kernel drops queued packets until the queue has a copy mode (field 4).
for _ in $(seq 100); do
	if in_ns awk -v q="$queue" '$1 == q && $4 != 0 { found = 1 } END { exit !found }' \
		/proc/net/netfilter/nfnetlink_queue 2>/dev/null; then
		break
	fi
	sleep 0.05
done

echo "== sending: 3 UDP datagrams over IPv4, 1 over IPv6, 1 TCP connection attempt (nobody listens)"
in_ns bash -c '
	for i in 1 2 3; do echo "hello $i" > /dev/udp/127.0.0.1/9999; sleep 0.1; done
	echo "hello six" > /dev/udp/::1/9999
	{ exec 3<>/dev/tcp/127.0.0.1/9998; } 2>/dev/null
' || true
sleep 0.5

echo "== stopping nfqlua (SIGTERM)"
kill -TERM "$pid"
wait "$pid" || true
pid=""
sleep 0.1
echo "== done; the namespace and its rules are removed"

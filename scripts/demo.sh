#!/usr/bin/env bash
# make demo: nfqlua on real packets in a private network namespace, in a few
# seconds: a drop by content, a rewrite seen at the receiver, a live reload
# under traffic that loses nothing, the counters; then everything is removed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
	echo "demo: run as root (it creates a network namespace and iptables rules)" >&2
	exit 1
fi

ns="nfqlua-demo-$$"
queue=1
port=9999
dir=""
pid=""

cleanup() {
	trap - EXIT INT TERM
	if [ -n "$pid" ]; then
		kill -TERM "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	ip netns del "$ns" 2>/dev/null || true
	[ -z "$dir" ] || rm -rf "$dir"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted, cleaning up"; exit 130' INT TERM

in_ns() { ip netns exec "$ns" "$@"; }

# The daemon's lines go to a file; show() prints those not shown yet, so that
# they appear in order with the demo's own.
shown=0
show() {
	local total
	total=$(wc -l < "$dir/log")
	if [ "$total" -gt "$shown" ]; then
		tail -n "+$((shown + 1))" "$dir/log" | head -n "$((total - shown))" | sed 's/^/   /'
		shown=$total
	fi
}
# wait_log TEXT: wait until the daemon has logged TEXT (up to 5 s).
wait_log() {
	for _ in $(seq 100); do
		grep -qF -- "$1" "$dir/log" && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	show
	echo "demo: nfqlua did not log '$1'" >&2
	exit 1
}
indent() { sed 's/^/   /'; }

# A root-owned directory: nfqlua refuses, as root, a script others could change.
dir=$(mktemp -d)
cat > "$dir/filter.lua" <<'EOF'
-- Drop UDP datagrams that mention "secret"; append " v1" to the others.
local tag = " v1"
return function(pkt)
	local payload = pkt:get_payload()
	if payload:find("secret", 1, true) then
		pkt:drop()
	else
		pkt:set_payload(payload .. tag)
		pkt:fix_checksums()   -- the IP and UDP lengths and checksums
		pkt:accept()
	end
end
EOF

echo "== a private network namespace ($ns, only lo); UDP to 127.0.0.1:$port goes to NFQUEUE $queue:"
ip netns add "$ns"
in_ns ip link set lo up
in_ns iptables -A OUTPUT -o lo -p udp --dport "$port" -j NFQUEUE --queue-num "$queue"
echo "   iptables -A OUTPUT -o lo -p udp --dport $port -j NFQUEUE --queue-num $queue"
echo "== the filter, filter.lua:"
indent < "$dir/filter.lua"
echo "== nfqlua filter.lua --queue $queue"
# Not through in_ns: $! must be nfqlua itself, so that signals reach it.
ip netns exec "$ns" ./nfqlua "$dir/filter.lua" --queue "$queue" > "$dir/log" 2>&1 &
pid=$!
wait_log "queue $queue bound"
show

echo "== 1. three datagrams: the filter drops one by content and rewrites the others"
in_ns luajit scripts/send.lua "$port" "hello" "top secret" "world" | indent

echo "== 2. a live reload under traffic: 2000 numbered datagrams in 2 s; after 1 s, \"v1\" becomes \"v2\""
echo "      in filter.lua and nfqlua gets SIGHUP"
in_ns luajit scripts/send.lua "$port" --count 2000 --rate 1000 > "$dir/sent" &
sender=$!
sleep 1
sed -i 's/ v1"/ v2"/' "$dir/filter.lua"
kill -HUP "$pid"
wait_log "version 2 runs now"
wait "$sender"
show
indent < "$dir/sent"

echo "== 3. the counters (SIGUSR1)"
kill -USR1 "$pid"
wait_log "received="
show

echo "== stopping nfqlua (SIGTERM)"
kill -TERM "$pid"
wait "$pid" || true
pid=""
show
echo "== done; the namespace, its rule and the filter are removed"

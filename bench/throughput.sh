#!/usr/bin/env bash
# TCP throughput through nfqlua (also run by make bench): iperf3 over
# loopback in a private namespace, its MTU set to MTU (1500, Ethernet's),
# DURATION seconds a run, with
#   none    no NFQUEUE rule;
#   all     every packet queued to nfqlua scripts/examples/accept_all.lua,
#           queue flag GSO on (nfqlua's default): the queue gets the
#           sender's GSO packets whole, up to 64 KiB;
#   nogso   the same with --no-gso: the kernel cuts them into MTU-sized
#           segments first, and the queue gets each;
#   bypass  the rules of README, Bypass (INPUT), and
#           scripts/examples/bypass_after.lua, which bypasses each flow
#           after its first 10 packets.
# The iperf3 client runs on CLIENT_CPU (0), its server on SERVER_CPU (1),
# nfqlua on NFQ_CPU (1). Gbit/s received (iperf3's receiver figure), medians of RUNS rounds that
# each measure all three; the packets queued per run from the kernel's
# counter. Puts its section in bench/RESULTS.md, in place of the last run's.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$(dirname "$BENCH_DIR")"
RUNS=${RUNS:-5}
DURATION=${DURATION:-3}
PORT=${PORT:-5201}
MTU=${MTU:-1500}
CLIENT_CPU=${CLIENT_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
NFQ_CPU=${NFQ_CPU:-1}
OUT=${OUT:-$BENCH_DIR/RESULTS.md}

if [[ ${1:-} != --inside ]]; then
	[[ $(id -u) == 0 ]] || { echo "throughput.sh: run as root" >&2; exit 1; }
	command -v iperf3 >/dev/null || { echo "throughput.sh: needs iperf3 (apt-get install iperf3)" >&2; exit 1; }
	[[ -x ./nfqlua ]] || make -s nfqlua
	exec unshare -n "$0" --inside
fi
ip link set lo up mtu "$MTU"
TMP=$(mktemp -d /tmp/nfq-throughput.XXXXXX)
PID=
cleanup() {
	[[ -n $PID ]] && kill -KILL "$PID" 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT

# The rules of each setup, from a clean INPUT chain.
rules() {
	iptables -w -F INPUT
	iptables -w -t security -F INPUT
	case $1 in
	all | nogso) iptables -w -A INPUT -p tcp -j NFQUEUE --queue-num 0 ;;
	bypass)
		iptables -w -A INPUT -j CONNMARK --restore-mark --mask 0x40000000
		iptables -w -A INPUT -m mark --mark 0x40000000/0x40000000 -j ACCEPT
		iptables -w -A INPUT -p tcp -j NFQUEUE --queue-num 0
		iptables -w -t security -A INPUT -m mark --mark 0x40000000/0x40000000 \
			-j CONNMARK --save-mark --mask 0x40000000
		;;
	esac
}

# The packets queue 0 has been given so far (the kernel's id sequence).
queued() { awk '$1 == 0 { print $8 }' /proc/net/netfilter/nfnetlink_queue; }

# run SETUP: "Gbit/s queued-packets" of one iperf3 run.
run() {
	rules "$1"
	if [[ $1 != none ]]; then
		local script=scripts/examples/accept_all.lua flags=()
		[[ $1 == bypass ]] && script=scripts/examples/bypass_after.lua
		[[ $1 == nogso ]] && flags=(--no-gso)
		NFQ_BYPASS_AFTER=10 taskset -c "$NFQ_CPU" ./nfqlua "$script" --queue 0 "${flags[@]}" >"$TMP/nfq.log" 2>&1 &
		PID=$!
		local i
		for ((i = 0; i < 500; i++)); do grep -qs bound "$TMP/nfq.log" && break; sleep 0.01; done
	fi
	iperf3 -s -1 -p "$PORT" -A "$SERVER_CPU" >/dev/null 2>&1 &
	local server=$!
	sleep 0.3
	iperf3 -c 127.0.0.1 -p "$PORT" -A "$CLIENT_CPU" -t "$DURATION" -J >"$TMP/iperf.json"
	wait "$server" || true
	local n=0
	if [[ -n $PID ]]; then
		n=$(queued)
		kill -TERM "$PID"
		wait "$PID" || true
		PID=
	fi
	python3 -c 'import json, sys; print("%.2f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e9))' \
		"$TMP/iperf.json" | tr '\n' ' '
	echo "$n"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

declare -A GBPS QUEUED
for ((round = 1; round <= RUNS; round++)); do
	for id in none all nogso bypass; do
		read -r g n < <(run "$id")
		GBPS[$id]+=" $g"
		QUEUED[$id]+=" $n"
		echo "  round $round $id: $g Gbit/s, $n packets queued" >&2
	done
done

row() {
	local g
	g=$(printf '%s\n' ${GBPS[$1]} | median)
	echo "| $2 | $g | $(awk -v a="$g" -v b="$(printf '%s\n' ${GBPS[none]} | median)" 'BEGIN { printf "%.2f", b ? a / b : 0 }') | $(printf '%s\n' ${QUEUED[$1]} | median) |"
}
report=$(cat <<MD

## TCP throughput ($(date -u '+%Y-%m-%d %H:%M UTC'))

\`bench/throughput.sh\`: one iperf3 TCP stream over loopback (MTU $MTU) in a private namespace, ${DURATION} s a run, client on
CPU $CLIENT_CPU, server on CPU $SERVER_CPU, nfqlua on CPU $NFQ_CPU;
Gbit/s received, medians of $RUNS rounds (rounds interleave the setups); packets queued per run from the kernel's
counter (iperf3's control and data connections both pass the rules).

| setup | Gbit/s | vs no queue | packets queued |
|---|---:|---:|---:|
$(row none "no NFQUEUE rule")
$(row all "every packet queued: \`accept_all.lua\`, GSO on (the queue gets whole GSO packets, up to 64 KiB)")
$(row nogso "every packet queued: \`accept_all.lua\`, \`--no-gso\` (the queue gets MTU-sized segments)")
$(row bypass "README Bypass rules, \`bypass_after.lua\`: bypass after 10 packets")

Runs (Gbit/s): none${GBPS[none]}; all${GBPS[all]}; nogso${GBPS[nogso]}; bypass${GBPS[bypass]}.
MD
)
echo "$report"
if [[ -f $OUT ]]; then
	awk '/^## TCP throughput / {skip = 1; next} /^## / {skip = 0} !skip' "$OUT" >"$OUT.new" && mv "$OUT.new" "$OUT"
fi
echo "$report" >>"$OUT"

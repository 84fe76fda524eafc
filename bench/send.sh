#!/usr/bin/env bash
# make bench-send (also run by make bench): how many packets/s nfq.send gets
# out of a script, against bench/raw_sender, a C raw-socket sender that sends
# the same prebuilt packet with sendmmsg, 64 per call, as nfq.send's flush
# does. Both are pinned to CPU (1) and send 64-byte UDP (IPv4) out of a veth
# device in a private namespace, whose peer drops them unread: the figure is
# the send path. Packets/s come from the device's tx counter over each
# WINDOW, CPU µs/packet from the sender's utime+stime; RUNS rounds, each
# measuring every sender once, medians. Puts its section in
# bench/RESULTS.md, in place of the last run's.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$(dirname "$BENCH_DIR")"
RUNS=${RUNS:-3}
WARM=${WARM:-0.5}
WINDOW=${WINDOW:-1.0}
CPU=${CPU:-1}
SIZE=${SIZE:-64}
OUT=${OUT:-$BENCH_DIR/RESULTS.md}
DEV=nfqsend0

if [[ ${1:-} != --inside ]]; then
	[[ $(id -u) == 0 ]] || { echo "send.sh: run as root" >&2; exit 1; }
	make -s -C "$BENCH_DIR" raw_sender >/dev/null
	[[ -x ./nfqlua ]] || make -s nfqlua
	exec unshare -n "$0" --inside
fi
ip link set lo up
# A veth pair whose far end drops what it gets, unread: frames addressed to
# a hardware address that is not its own (dummy devices are not in every kernel).
ip link add "$DEV" type veth peer name "${DEV}p"
ip addr add 198.18.0.1/15 dev "$DEV"
ip link set "$DEV" up
ip link set "${DEV}p" up
ip neigh replace 198.18.0.2 lladdr 02:00:00:00:00:02 dev "$DEV" nud permanent
TMP=$(mktemp -d /tmp/nfq-send.XXXXXX)
PID=
cleanup() {
	[[ -n $PID ]] && kill -KILL "$PID" 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT
CLK_TCK=$(getconf CLK_TCK)

# The device's tx packets, from /proc/net/dev (sysfs shows another namespace's).
tx() { awk -v d="$DEV:" '{ sub(/^ */, "") } index($0, d) == 1 { sub(d, ""); split($0, f); print f[10] }' /proc/net/dev; }
cpu_ticks() {
	local s
	s=$(<"/proc/$1/stat")
	s=${s##*) }
	local -a f=($s)
	echo $((f[11] + f[12]))
}

# window: "packets/s µs/packet" of process $PID over WINDOW seconds.
window() {
	local a b ta tb ca cb
	a=$(tx); ta=$EPOCHREALTIME; ca=$(cpu_ticks "$PID")
	sleep "$WINDOW"
	b=$(tx); tb=$EPOCHREALTIME; cb=$(cpu_ticks "$PID")
	awk -v n=$((b - a)) -v s="$ta" -v e="$tb" -v c=$((cb - ca)) -v h="$CLK_TCK" \
		'BEGIN { printf "%.0f %.2f\n", n / (e - s), n ? c / h * 1e6 / n : 0 }'
}

measure_c() {
	taskset -c "$CPU" bench/raw_sender -s "$SIZE" -b 64 -t "$(awk -v w="$WARM" -v n="$WINDOW" 'BEGIN {print w + n + 0.3}')" \
		>"$TMP/c.out" &
	PID=$!
	sleep "$WARM"
	window
	wait "$PID"
	PID=
}

# measure_nfq [MARK]: the daemon sending from on_timer, with --send.
measure_nfq() {
	env BENCH_SEND_SIZE="$SIZE" ${1:+BENCH_SEND_MARK=$1} taskset -c "$CPU" \
		./nfqlua bench/send_filter.lua --queue 0 --send >"$TMP/nfq.log" 2>&1 &
	PID=$!
	local i
	for ((i = 0; i < 500; i++)); do grep -qs bound "$TMP/nfq.log" && break; sleep 0.01; done
	sleep "$WARM"
	window
	kill -TERM "$PID"
	wait "$PID" || true
	PID=
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

declare -A PPS US
for ((round = 1; round <= RUNS; round++)); do
	for id in c nfq nfq-mark; do
		case $id in
		c) read -r p u < <(measure_c) ;;
		nfq) read -r p u < <(measure_nfq) ;;
		nfq-mark) read -r p u < <(measure_nfq 7) ;;
		esac
		PPS[$id]+=" $p"
		US[$id]+=" $u"
		echo "  round $round $id: $p packets/s, $u µs/packet" >&2
	done
done

row() {
	local pps us
	pps=$(printf '%s\n' ${PPS[$1]} | median)
	us=$(printf '%s\n' ${US[$1]} | median)
	echo "| $2 | $pps | $(awk -v a="$pps" -v b="$(printf '%s\n' ${PPS[c]} | median)" 'BEGIN { printf "%.2f", b ? a / b : 0 }') | $us |"
}
report=$(cat <<MD

## Sending ($(date -u '+%Y-%m-%d %H:%M UTC'))

\`bench/send.sh\`: ${SIZE}-byte UDP (IPv4) sent through raw sockets out of a veth device in a private namespace (its peer drops
them unread), sender pinned to CPU $CPU; packets/s from the device's tx counter, medians of $RUNS windows of ${WINDOW} s
(rounds interleave the senders).

| sender | packets/s | vs C | CPU µs/packet |
|---|---:|---:|---:|
$(row c "C: \`bench/raw_sender\`, one prebuilt packet, sendmmsg of 64")
$(row nfq "nfqlua: \`nfq.send(packet)\` in on_timer (\`bench/send_filter.lua\`, --send)")
$(row nfq-mark "nfqlua: the same with \`{ mark = 7 }\` per packet (an SO_MARK control message each)")

Runs: C${PPS[c]}; nfq.send${PPS[nfq]}; with a mark${PPS[nfq-mark]}.
MD
)
echo "$report"
if [[ -f $OUT ]]; then
	awk '/^## Sending / {skip = 1; next} /^## / {skip = 0} !skip' "$OUT" >"$OUT.new" && mv "$OUT.new" "$OUT"
fi
echo "$report" >>"$OUT"

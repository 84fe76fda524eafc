#!/usr/bin/env bash
# make soak: nfqlua under steady load for SOAK_SECONDS (default 600) with a
# SIGHUP every few seconds, a script that holds and reorders packets and
# raises now and then. Reports packets sent vs accounted for, and RSS, fds and
# Lua heap at the start and the end; puts the figures in bench/RESULTS.md,
# in place of the last run's.
# Runs as root in a private network namespace, traffic on 127.0.0.1 only.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
cd "$ROOT"

SECONDS_TOTAL=${SOAK_SECONDS:-600}
HUP_EVERY=${SOAK_HUP_EVERY:-3}
SAMPLE_EVERY=${SOAK_SAMPLE_EVERY:-30}
PORT=9600
OUT=${OUT:-$BENCH_DIR/RESULTS.md}

if [[ ${1:-} != --inside ]]; then
	[[ $(id -u) == 0 ]] || { echo "soak: run as root" >&2; exit 1; }
	make -s -C "$BENCH_DIR" >/dev/null
	[[ -x ./nfqlua ]] || make -s nfqlua
	exec unshare -n "$0" --inside
fi

ip link set lo up
iptables -A OUTPUT -o lo -p udp --dport $PORT -j NFQUEUE --queue-num 0
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

./bench/sink -p $PORT -c 1 > "$work/sink.out" 2>&1 &
sink=$!
./nfqlua bench/soak.lua --queue 0 --pidfile "$work/pid" > "$work/daemon.log" 2>&1 &
for _ in $(seq 100); do [[ -s $work/pid ]] && break; sleep 0.05; done
pid=$(cat "$work/pid")
sleep 0.3

sample() {
	kill -USR1 "$pid"
	sleep 0.2
	local rss fds stats
	rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
	fds=$(ls /proc/$pid/fd | wc -l)
	stats=$(grep -o 'lua_kb=[0-9]*' "$work/daemon.log" | tail -1 | cut -d= -f2)
	echo "$1 $rss $fds $stats" >> "$work/samples"
	echo "soak: t=$1 rss=${rss} kB fds=$fds lua=${stats} kB"
}

sample 0
./bench/gen -p $PORT -s 200 -t "$SECONDS_TOTAL" -b 32 -c 0 -S 4194304 > "$work/gen.out" 2>&1 &
gen=$!
start=$(date +%s)
next_sample=$SAMPLE_EVERY
while kill -0 $gen 2>/dev/null; do
	sleep "$HUP_EVERY"
	kill -HUP "$pid"
	now=$(( $(date +%s) - start ))
	if (( now >= next_sample )); then
		sample "$now"
		next_sample=$((next_sample + SAMPLE_EVERY))
	fi
done
sleep 1
sample end
kill -TERM "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
kill -USR1 $sink; sleep 0.3; kill $sink; wait $sink 2>/dev/null || true

sent=$(grep -o 'sent=[0-9]*' "$work/gen.out" | head -1 | cut -d= -f2)
delivered=$(grep -o 'count=[0-9]*' "$work/sink.out" | tail -1 | cut -d= -f2)
# Datagrams the receiving socket itself had no room for (this namespace's UDP counters).
rcvbuf=$(awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp)
final=$(grep 'received=' "$work/daemon.log" | tail -1)
get() { grep -o "$1=[0-9-]*" <<<"$final" | cut -d= -f2; }
qdrop=$(get kernel_queue_dropped); udrop=$(get kernel_user_dropped)
accounted=$((delivered + qdrop + udrop + rcvbuf))
first=$(head -1 "$work/samples"); last=$(tail -1 "$work/samples")
read -r _ rss0 fd0 lua0 <<<"$first"; read -r _ rss1 fd1 lua1 <<<"$last"

report=$(cat <<MD

## Soak ($(date -u '+%Y-%m-%d %H:%M UTC'))

\`bench/soak.sh\`: ${SECONDS_TOTAL} s of 200-byte UDP at full speed into queue 0 (generator on CPU 0, daemon and sink on CPU 1),
bench/soak.lua holding and reordering every second packet and raising on every 1000th, a SIGHUP every ${HUP_EVERY} s.

| figure | start | end |
|---|---:|---:|
| RSS | ${rss0} kB | ${rss1} kB |
| open fds | ${fd0} | ${fd1} |
| Lua heap | ${lua0} kB | ${lua1} kB |

- packets sent: ${sent}; delivered to the receiver: ${delivered}; dropped by the kernel with the queue full: ${qdrop}, with the netlink socket full: ${udrop}; lost at the receiver's full socket: ${rcvbuf}; accounted for: ${accounted} (difference $((sent - accounted)))
- daemon counters at the end: ${final#*queue 0: }
MD
)
echo "$report"
# This run's section replaces the one of the run before.
if [[ -f $OUT ]]; then
	awk '/^## Soak / {skip = 1; next} /^## / {skip = 0} !skip' "$OUT" >"$OUT.new" && mv "$OUT.new" "$OUT"
fi
echo "$report" >> "$OUT"

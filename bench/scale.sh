#!/usr/bin/env bash
# make bench-scale: does nfqlua --queue 0-1 (a worker thread per queue) move
# more packets than one queue on this machine? Two generators, one pinned to
# each CPU, send 64-byte UDP; the rule spreads by CPU (--queue-balance 0:1
# --queue-cpu-fanout) or sends all to queue 0. Verdicts/s come from the
# kernel's id sequences; medians of RUNS runs. Puts its section in
# bench/RESULTS.md, in place of the last run's.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$(dirname "$BENCH_DIR")"
RUNS=${RUNS:-3}
OUT=${OUT:-$BENCH_DIR/RESULTS.md}
PORT=9999

if [[ ${1:-} != --inside ]]; then
	[[ $(id -u) == 0 ]] || { echo "scale: run as root" >&2; exit 1; }
	make -s -C "$BENCH_DIR" >/dev/null
	[[ -x ./nfqlua ]] || make -s nfqlua
	exec unshare -n "$0" --inside
fi
ip link set lo up

# Verdicts given so far on every queue: id sequence less socket drops and packets waiting.
verdicts() { awk '{ s += $8 - $7 - $3 } END { print s + 0 }' /proc/net/netfilter/nfnetlink_queue; }

measure() { # rule target args, nfqlua --queue value
	iptables -F OUTPUT
	iptables -A OUTPUT -o lo -p udp --dport $PORT -j NFQUEUE $1
	./nfqlua scripts/examples/accept_all.lua --queue "$2" > /dev/null 2>&1 &
	local daemon=$! gens=()
	sleep 0.5
	for cpu in 0 1; do
		./bench/gen -p $PORT -s 64 -t 3.5 -b 64 -c $cpu -S 4194304 > /dev/null 2>&1 &
		gens+=($!)
	done
	sleep 0.8
	local a b
	a=$(verdicts)
	sleep 2
	b=$(verdicts)
	wait "${gens[@]}" 2>/dev/null || true
	kill "$daemon"
	wait "$daemon" 2>/dev/null || true
	echo $(((b - a) / 2))
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

ones=() twos=()
for _ in $(seq "$RUNS"); do
	ones+=("$(measure "--queue-num 0" 0)")
	twos+=("$(measure "--queue-balance 0:1 --queue-cpu-fanout" 0-1)")
done
one=$(printf '%s\n' "${ones[@]}" | median)
two=$(printf '%s\n' "${twos[@]}" | median)
report=$(cat <<MD

## Scaling across cores ($(date -u '+%Y-%m-%d %H:%M UTC'))

\`bench/scale.sh\`: two generators (64-byte UDP), one pinned to each of the $(nproc) CPUs; nfqlua accept_all.lua unpinned.
Median of $RUNS runs, verdicts/s over 2 s.

| setup | verdicts/s |
|---|---:|
| one queue: \`--queue-num 0\`, \`nfqlua --queue 0\` | $one |
| two queues: \`--queue-balance 0:1 --queue-cpu-fanout\`, \`nfqlua --queue 0-1\` | $two |

Scaling factor: $(awk -v a="$two" -v b="$one" 'BEGIN { printf "%.2f", b ? a / b : 0 }') (runs: one ${ones[*]}; two ${twos[*]}).
MD
)
echo "$report"
# This run's section replaces the one of the run before.
if [[ -f $OUT ]]; then
	awk '/^## Scaling / {skip = 1; next} /^## / {skip = 0} !skip' "$OUT" >"$OUT.new" && mv "$OUT.new" "$OUT"
fi
echo "$report" >> "$OUT"

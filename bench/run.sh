#!/usr/bin/env bash
# NFQUEUE benchmark: how many packets per second each consumer verdicts, next
# to the hand-written C reference measured in the same run.
#
#   sudo bench/run.sh                  # everything, about 3 minutes (190 s)
#   sudo BENCH_ONLY='ref|accept' bench/run.sh
#
# It re-executes itself in a private network namespace (unshare -n), so the
# iptables rule, the queue and all traffic (127.0.0.1 only) vanish with it.
# Results: bench/RESULTS.md (also printed).
#
# For the comparison consumers (bench/consumers/: ruby-nfqueue, nfqueue-go) it
# installs their Debian packages with apt-get when missing, and builds
# bench/go_accept (make -C bench go_accept).
#
# Knobs (environment): RUNS (5 rounds; a round measures one window of each
# consumer in turn), WARM (0.2 s before each window), WINDOW (1.0 s),
# SIZES ("64 1400"), POST (1: the POSTROUTING table), GSO (1: the GSO table),
# MAXLEN (1024, queue length for every consumer), GEN_BATCH (64), GEN_SNDBUF
# (64 MiB), GEN_CPU (0), CONS_CPU (1), SINK_CPU (CONS_CPU), GSO_SINK_CPU
# (GEN_CPU), PORT (9999), FLOWS (1: the flow table's rounds), BLOCKLIST (1:
# the blocklist example's rounds), GENEVA (1: the Geneva strategies' rounds on
# TCP), BENCH_ONLY (regex on consumer ids), OUT.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
cd "$ROOT"

RUNS=${RUNS:-5}
WARM=${WARM:-0.2}
WINDOW=${WINDOW:-1.0}
SIZES=${SIZES:-64 1400}
POST=${POST:-1}
GSO=${GSO:-1}
MAXLEN=${MAXLEN:-1024}
GEN_BATCH=${GEN_BATCH:-64}
GEN_SNDBUF=${GEN_SNDBUF:-67108864}
GEN_CPU=${GEN_CPU:-0}
CONS_CPU=${CONS_CPU:-1}
SINK_CPU=${SINK_CPU:-$CONS_CPU}
GSO_SINK_CPU=${GSO_SINK_CPU:-$GEN_CPU}
PORT=${PORT:-9999}
BENCH_ONLY=${BENCH_ONLY:-}
OUT=${OUT:-$BENCH_DIR/RESULTS.md}
QUEUE=0
PROC_Q=/proc/net/netfilter/nfnetlink_queue

# The consumers, "id|label|command", run from the repo root and pinned to
# CONS_CPU. The first one is the reference every ratio is taken against.
# Add a line to measure another consumer of queue 0.
LUA_ENV="env LUA_PATH='lua/?.lua;;' LUA_CPATH='lua/?.so;;'"
CONSUMERS=(
	"ref|C reference (libmnl, recvmmsg, batch verdict)|bench/ref_consumer -q $QUEUE -m $MAXLEN"
	"accept|nfqlua scripts/examples/accept_all.lua|./nfqlua scripts/examples/accept_all.lua --queue $QUEUE --max-len $MAXLEN"
	"accept-scraped|nfqlua scripts/examples/accept_all.lua, /metrics scraped every 100 ms|bench/scraped.sh 127.0.0.1:9640 ./nfqlua scripts/examples/accept_all.lua --queue $QUEUE --max-len $MAXLEN --metrics 127.0.0.1:9640"
	"ref-mark|C reference that marks every packet (the filter's kernel work)|bench/ref_consumer -q $QUEUE -m $MAXLEN -k 0x42"
	"filter|nfqlua bench/filter.lua (parse IPv4+UDP, mark)|./nfqlua bench/filter.lua --queue $QUEUE --max-len $MAXLEN"
	"lib|library mode: luajit bench/lib_filter.lua|$LUA_ENV BENCH_MAXLEN=$MAXLEN luajit bench/lib_filter.lua $QUEUE"
	"record|nfqlua bench/record_tenth.lua (accept all, record every 10th packet with nfq.pcap)|env BENCH_RECORD=/tmp/nfq-bench-record.pcap ./nfqlua bench/record_tenth.lua --queue $QUEUE --max-len $MAXLEN"
	"copy|nfqlua bench/copy_send.lua (drop, send two copies with a new TTL)|./nfqlua bench/copy_send.lua --queue $QUEUE --max-len $MAXLEN --send --send-mark 0x1/0x1"
	"geneva-miss|nfqlua scripts/examples/geneva.lua, bench/geneva_miss.strategy (the issue's two TCP strategies, unmatched)|env NFQ_GENEVA_STRATEGY=bench/geneva_miss.strategy ./nfqlua scripts/examples/geneva.lua --queue $QUEUE --max-len $MAXLEN --no-gso --send --send-mark 0x1/0x1"
	"geneva-dup|nfqlua scripts/examples/geneva.lua, bench/geneva_dup.strategy (drop, send it and a TTL-limited copy)|env NFQ_GENEVA_STRATEGY=bench/geneva_dup.strategy ./nfqlua scripts/examples/geneva.lua --queue $QUEUE --max-len $MAXLEN --no-gso --send --send-mark 0x1/0x1"
	"geneva-frag|nfqlua scripts/examples/geneva.lua, bench/geneva_frag.strategy (drop, send two IP fragments)|env NFQ_GENEVA_STRATEGY=bench/geneva_frag.strategy ./nfqlua scripts/examples/geneva.lua --queue $QUEUE --max-len $MAXLEN --no-gso --send --send-mark 0x1/0x1"
	"ruby|Ruby: ruby-nfqueue, bench/consumers/accept.rb|ruby bench/consumers/accept.rb $QUEUE $MAXLEN"
	"go|Go: nfqueue-go (chifflier), bench/consumers/accept.go|bench/go_accept $QUEUE $MAXLEN"
)
# Debian packages the comparison consumers need ("id|packages"), installed by
# run.sh when missing and when the consumer is selected.
CONSUMER_PKGS=(
	"ruby|ruby ruby-nfqueue"
	"go|golang-go golang-github-chifflier-nfqueue-go-dev pkg-config"
)
# The same marks after routing (the queue in mangle POSTROUTING, where a new
# mark does not make the kernel route the packet again), ratios to the first.
POST_CONSUMERS=(
	"post-ref|C reference, queue in POSTROUTING|bench/ref_consumer -q $QUEUE -m $MAXLEN"
	"post-filter|nfqlua bench/filter.lua (parse IPv4+UDP, mark), queue in POSTROUTING|./nfqlua bench/filter.lua --queue $QUEUE --max-len $MAXLEN"
)
# The GSO table, "id|consumer|generator flags|command": the reference with
# NFQA_CFG_F_GSO, and without it (-G, as python-netfilterqueue runs), fed by a
# plain and by a GSO sender. The first line is the baseline.
GSO_CONSUMERS=(
	"gso-plain|C reference, NFQA_CFG_F_GSO set||bench/ref_consumer -q $QUEUE -m $MAXLEN"
	"gso-gso|C reference, NFQA_CFG_F_GSO set|-g|bench/ref_consumer -q $QUEUE -m $MAXLEN"
	"gso-nogso|C reference, NFQA_CFG_F_GSO not set|-g|bench/ref_consumer -q $QUEUE -m $MAXLEN -G"
)

# The flow table: a stateful filter (bench/flows.lua) against accept_all, both
# fed over 10 and over 100,000 flows (gen -F), "id|label|generator flags|command";
# FLOWS=0 leaves the table out.
FLOWS=${FLOWS:-1}
FLOW_CONSUMERS=(
	"flows-accept-10|nfqlua accept_all.lua, 10 flows|-F 10|./nfqlua scripts/examples/accept_all.lua --queue $QUEUE --max-len $MAXLEN"
	"flows-10|nfqlua bench/flows.lua, 10 flows|-F 10|./nfqlua bench/flows.lua --queue $QUEUE --max-len $MAXLEN"
	"flows-accept-100k|nfqlua accept_all.lua, 100,000 flows|-F 100000|./nfqlua scripts/examples/accept_all.lua --queue $QUEUE --max-len $MAXLEN"
	"flows-100k|nfqlua bench/flows.lua, 100,000 flows|-F 100000|./nfqlua bench/flows.lua --queue $QUEUE --max-len $MAXLEN"
)

# The blocklist example with 1,000,000 names (written by spec/helpers/names.lua
# as bench/sets.lua does) against accept_all, both fed DNS queries for names
# not listed (gen -D), "id|label|generator flags|command"; BLOCKLIST=0 leaves
# the table out.
BLOCKLIST=${BLOCKLIST:-1}
BLOCKLIST_CONSUMERS=(
	"bl-accept|nfqlua accept_all.lua|-D|./nfqlua scripts/examples/accept_all.lua --queue $QUEUE --max-len $MAXLEN"
	"blocklist|nfqlua scripts/examples/blocklist.lua, 1,000,000 names|-D|env NFQ_BLOCKLIST=\$TMP/blocklist.txt ./nfqlua scripts/examples/blocklist.lua --queue $QUEUE --max-len $MAXLEN --send --send-mark 0x1/0x1"
)

# The issue's two Geneva strategies on TCP segments they match (gen -T: flags
# PA, from a raw socket) against accept_all on the same segments,
# "id|label|generator flags|command". The segments and the strategies' output
# (send mark: not queued again) are dropped when they arrive (raw PREROUTING), so no RST answers them;
# GENEVA=0 leaves the table out.
GENEVA=${GENEVA:-1}
GENEVA_CONSUMERS=(
	"tcp-accept|nfqlua accept_all.lua|-T|./nfqlua scripts/examples/accept_all.lua --queue $QUEUE --max-len $MAXLEN --no-gso"
	"geneva-dup-tcp|nfqlua scripts/examples/geneva.lua, bench/geneva_dup_tcp.strategy|-T|env NFQ_GENEVA_STRATEGY=bench/geneva_dup_tcp.strategy ./nfqlua scripts/examples/geneva.lua --queue $QUEUE --max-len $MAXLEN --no-gso --send --send-mark 0x1/0x1"
	"geneva-frag-tcp|nfqlua scripts/examples/geneva.lua, bench/geneva_frag_tcp.strategy|-T|env NFQ_GENEVA_STRATEGY=bench/geneva_frag_tcp.strategy ./nfqlua scripts/examples/geneva.lua --queue $QUEUE --max-len $MAXLEN --no-gso --send --send-mark 0x1/0x1"
)

die() { echo "run.sh: $*" >&2; exit 1; }
selected() { [[ -z $BENCH_ONLY || $1 =~ $BENCH_ONLY ]]; }

# Install (apt-get, as root) the Debian packages of the selected comparison
# consumers that are missing, then build the Go one. A failure only warns: that
# consumer's line then says it did not bind.
install_consumer_pkgs() {
	local entry id pkgs p missing=()
	for entry in "${CONSUMER_PKGS[@]}"; do
		IFS='|' read -r id pkgs <<<"$entry"
		selected "$id" || continue
		for p in $pkgs; do
			dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
		done
	done
	((${#missing[@]})) || return 0
	echo "run.sh: installing ${missing[*]}" >&2
	local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}")
	"${apt[@]}" >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && "${apt[@]}" >/dev/null; } ||
		echo "run.sh: warning: could not install ${missing[*]}" >&2
}

# --- Outside: build, then move into a private network namespace. ---------
if [[ -z ${NFQ_BENCH_NS:-} ]]; then
	[[ $EUID -eq 0 ]] || die "needs root (iptables, NFQUEUE, unshare)"
	make -s -C "$BENCH_DIR" >/dev/null
	[[ -x ./nfqlua && -e lua/nfq/core.so ]] || make -s all >/dev/null
	install_consumer_pkgs
	if selected go; then
		make -s -C "$BENCH_DIR" go_accept >/dev/null || echo "run.sh: warning: could not build bench/go_accept" >&2
	fi
	exec unshare -n env NFQ_BENCH_NS=1 "$0" "$@"
fi

# --- Inside the namespace. -----------------------------------------------
ip link set lo up
# queue_at TABLE CHAIN: the run's one NFQUEUE rule, in that table's chain,
# after one that lets packets with the send mark (0x1/0x1) pass.
queue_at() {
	iptables -w -F OUTPUT
	iptables -w -t mangle -F POSTROUTING
	iptables -w -t "$1" -A "$2" -o lo -m mark --mark 0x1/0x1 -j RETURN
	iptables -w -t "$1" -A "$2" -o lo -p udp --dport "$PORT" -j NFQUEUE --queue-num "$QUEUE"
}
queue_at filter OUTPUT

TMP=$(mktemp -d /tmp/nfq-bench.XXXXXX)
SINK_PID=
CONS_PID=
cleanup() {
	local pid
	for pid in $CONS_PID $SINK_PID; do
		kill -KILL "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	done
	rm -rf "$TMP" /tmp/nfq-bench-record.pcap*
}
trap cleanup EXIT

CLK_TCK=$(getconf CLK_TCK)
T0=$EPOCHREALTIME

# Our queue's line in /proc: queue portid queued copy_mode copy_range
# queue_full_drops netlink_full_drops id_sequence 1. Empty when unbound.
qline() {
	local q rest
	while read -r q rest; do
		[[ $q == "$QUEUE" ]] && { echo "$q $rest"; return; }
	done <"$PROC_Q"
	true
}

# utime+stime of a process in clock ticks (every thread).
cpu_ticks() {
	local s
	s=$(<"/proc/$1/stat") || return 1
	s=${s##*) }
	local -a f=($s)
	echo $((f[11] + f[12]))
}

# Busy and total jiffies of one CPU, from /proc/stat.
core_jiffies() {
	local name user nice sys idle iow irq sirq steal rest
	while read -r name user nice sys idle iow irq sirq steal rest; do
		if [[ $name == "cpu$1" ]]; then
			echo $((user + nice + sys + irq + sirq + steal)) $((user + nice + sys + idle + iow + irq + sirq + steal))
			return
		fi
	done </proc/stat
}

# The sink's count: ask with SIGUSR1, wait for its next "count=N bytes=B t=T"
# line and print "N T" (or "- -" if it does not answer within 2 s).
sink_sample() {
	local before i line
	before=$(wc -l <"$TMP/sink.out")
	kill -USR1 "$SINK_PID"
	for ((i = 0; i < 400; i++)); do
		(($(wc -l <"$TMP/sink.out") > before)) && break
		sleep 0.005
	done
	line=$(tail -n 1 "$TMP/sink.out")
	if [[ $line =~ ^count=([0-9]+)\ bytes=[0-9]+\ t=([0-9.]+)$ ]]; then
		echo "${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
	else
		echo "- -"
	fi
}

wait_for() { # wait_for SECONDS COMMAND...: poll until the command succeeds
	local deadline=$((${EPOCHREALTIME/./} + ${1%.*} * 1000000))
	shift
	until "$@"; do
		((${EPOCHREALTIME/./} < deadline)) || return 1
		sleep 0.01
	done
}
bound_with_copy_mode() { local -a f=($(qline)); [[ ${#f[@]} -ge 5 && ${f[3]} != 0 ]]; }
unbound() { [[ -z $(qline) ]]; }
drained() { local -a f=($(qline)); [[ ${#f[@]} -ge 3 && ${f[2]} == 0 ]]; }

stop_consumer() {
	kill -TERM "$CONS_PID" 2>/dev/null || true
	wait_for 3 eval '! kill -0 '"$CONS_PID"' 2>/dev/null' || kill -KILL "$CONS_PID" 2>/dev/null || true
	wait "$CONS_PID" 2>/dev/null || true
	CONS_PID=
	wait_for 3 unbound || die "queue $QUEUE still bound after the consumer stopped"
}

median() { sort -g | awk 'NF {v[++n] = $1} END {if (!n) print "-"; else if (n % 2) print v[(n + 1) / 2]; else printf "%.0f\n", (v[n / 2] + v[n / 2 + 1]) / 2}'; }
minmax() { sort -g | awk 'NF {if (!n++) lo = $1; hi = $1} END {print (n ? lo : "-"), (n ? hi : "-")}'; }

# measure KEY CMD SIZE GENFLAGS: start the consumer, run one window of
# traffic, stop it, and add the window's figures to the A_<field>[KEY]
# lists; summarize KEY turns them into R_<field>[KEY]. Rounds interleave the
# consumers (one window each, RUNS rounds) so that the machine's drift over
# minutes reaches them all alike instead of favouring whichever ran first.
declare -A A_PPS A_DPS A_BUSY A_CPU A_PKT A_SENT A_QDROP A_UDROP A_RSS
declare -A R_PPS R_MIN R_MAX R_DPS R_CPU R_BUSY R_QDROP R_UDROP R_SENT R_RSS R_NOTE
measure() {
	local key=$1 cmd=$2 size=$3 genflags=$4
	local log="$TMP/${key//\//-}.log"
	[[ -n ${R_NOTE[$key]:-} ]] && return
	wait_for 3 unbound || die "queue $QUEUE is busy"
	(eval "exec taskset -c $CONS_CPU $cmd") >"$log" 2>&1 &
	CONS_PID=$!
	if ! wait_for 10 bound_with_copy_mode; then
		R_NOTE[$key]="did not bind: $(tail -n 1 "$log")"
		kill -KILL "$CONS_PID" 2>/dev/null || true
		wait "$CONS_PID" 2>/dev/null || true
		CONS_PID=
		return
	fi
	local dur
	dur=$(awk -v w="$WARM" -v n="$WINDOW" 'BEGIN {print w + n + 0.15}')
	bench/gen -p "$PORT" -s "$size" -t "$dur" -b "$GEN_BATCH" -S "$GEN_SNDBUF" -c "$GEN_CPU" $genflags >"$TMP/gen.out" &
	local gen_pid=$!
	sleep "$WARM"
	local -a qa qb sa sb ca cb
	local ta tb pa pb
	qa=($(qline)); ta=$EPOCHREALTIME; pa=$(cpu_ticks "$CONS_PID"); ca=($(core_jiffies "$CONS_CPU"))
	sa=($(sink_sample))
	sleep "$WINDOW"
	qb=($(qline)); tb=$EPOCHREALTIME; pb=$(cpu_ticks "$CONS_PID"); cb=($(core_jiffies "$CONS_CPU"))
	sb=($(sink_sample))
	wait "$gen_pid" || die "generator failed: $(cat "$TMP/gen.out")"
	local g=$(<"$TMP/gen.out"); g=${g#sent=}
	# Verdicted = ids handed out - those lost on a full socket - still queued.
	local va=$((qa[7] - qa[6] - qa[2])) vb=$((qb[7] - qb[6] - qb[2]))
	A_PPS[$key]+=" $(awk -v v=$((vb - va)) -v a="$ta" -v b="$tb" 'BEGIN {printf "%.0f", v / (b - a)}')"
	[[ ${sa[0]} != - && ${sb[0]} != - ]] &&
		A_DPS[$key]+=" $(awk -v c=$((sb[0] - sa[0])) -v a="${sa[1]}" -v b="${sb[1]}" 'BEGIN {printf "%.0f", c / (b - a)}')"
	A_BUSY[$key]+=" $(awk -v b=$((cb[0] - ca[0])) -v t=$((cb[1] - ca[1])) 'BEGIN {printf "%.0f", t ? 100 * b / t : 0}')"
	A_CPU[$key]=$((${A_CPU[$key]:-0} + pb - pa)); A_PKT[$key]=$((${A_PKT[$key]:-0} + vb - va))
	A_SENT[$key]=$((${A_SENT[$key]:-0} + ${g%% *}))
	wait_for 3 drained || true
	local rss
	rss=$(awk '/^VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$CONS_PID/status")
	A_RSS[$key]=$(awk -v a="${A_RSS[$key]:-0}" -v b="$rss" 'BEGIN {print (b > a ? b : a)}')
	local -a qf=($(qline))
	A_QDROP[$key]=$((${A_QDROP[$key]:-0} + qf[5])); A_UDROP[$key]=$((${A_UDROP[$key]:-0} + qf[6]))
	stop_consumer
}

summarize() {
	local key=$1 size=$2
	[[ -n ${A_PPS[$key]:-} ]] || return 0
	R_PPS[$key]=$(printf '%s\n' ${A_PPS[$key]} | median)
	read -r R_MIN[$key] R_MAX[$key] < <(printf '%s\n' ${A_PPS[$key]} | minmax)
	R_DPS[$key]=$(printf '%s\n' ${A_DPS[$key]:-} | median)
	R_BUSY[$key]=$(printf '%s\n' ${A_BUSY[$key]} | median)
	R_CPU[$key]=$(awk -v c="${A_CPU[$key]}" -v h="$CLK_TCK" -v p="${A_PKT[$key]}" 'BEGIN {printf "%.2f", p ? c / h * 1e6 / p : 0}')
	R_QDROP[$key]=${A_QDROP[$key]}
	R_UDROP[$key]=${A_UDROP[$key]}
	R_SENT[$key]=${A_SENT[$key]}
	R_RSS[$key]=${A_RSS[$key]}
	printf '  %-10s %6s B: %8s/s (%s-%s) delivered %8s/s  cpu %s us/pkt  core %s%%  drops %s/%s of %s  rss %s MB\n' \
		"${key%/*}" "$size" "${R_PPS[$key]}" "${R_MIN[$key]}" "${R_MAX[$key]}" "${R_DPS[$key]}" \
		"${R_CPU[$key]}" "${R_BUSY[$key]}" "${R_QDROP[$key]}" "${R_UDROP[$key]}" "${R_SENT[$key]}" "${R_RSS[$key]}" >&2
}

# Anything else running on these CPUs makes every figure meaningless: say so.
read -r g0 gt0 < <(core_jiffies "$GEN_CPU"); read -r c0 ct0 < <(core_jiffies "$CONS_CPU")
sleep 0.5
read -r g1 gt1 < <(core_jiffies "$GEN_CPU"); read -r c1 ct1 < <(core_jiffies "$CONS_CPU")
read -r IDLE_OK BUSY_BEFORE < <(awk -v g=$((g1 - g0)) -v gt=$((gt1 - gt0)) -v c=$((c1 - c0)) -v ct=$((ct1 - ct0)) \
	-v gc="$GEN_CPU" -v cc="$CONS_CPU" 'BEGIN {
		gp = gt ? 100 * g / gt : 0; cp = ct ? 100 * c / ct : 0
		printf "%d CPU %s %.0f%%, CPU %s %.0f%%\n", gp <= 10 && cp <= 10, gc, gp, cc, cp }')
((IDLE_OK)) || echo "run.sh: warning: the machine is busy before the run ($BUSY_BEFORE); figures will be low" >&2

bench/sink -p "$PORT" -c "$SINK_CPU" >"$TMP/sink.out" 2>&1 &
SINK_PID=$!
wait_for 3 grep -qs ready "$TMP/sink.out" || die "the sink did not start: $(cat "$TMP/sink.out")"

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo '?'; }
fmt() { [[ $1 == - ]] && { echo -; return; }; awk -v n="$1" 'BEGIN {s = sprintf("%.0f", n); o = ""; while (length(s) > 3) {o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3)} print s o}'; }
fmtk() { [[ $1 == - ]] && { echo -; return; }; awk -v n="$1" 'BEGIN {printf "%.0fk", n / 1000}'; }
# ratio A B: A/B to two places, or "—" without a B.
ratio() { awk -v a="$1" -v b="${2:-0}" 'BEGIN {printf (b ? "%.2f" : "—"), a / b}'; }
# label_of ID ENTRY...: the label of the consumer ID among "id|label|..." entries.
label_of() { local id=$1; shift; printf '%s\n' "$@" | awk -F'|' -v id="$id" '$1 == id {print $2}'; }

# rounds ARRAY: RUNS interleaved rounds over the consumers of that array at
# each size. Entries are "id|label|command" or, with generator flags,
# "id|label|flags|command".
rounds() {
	local -n list=$1
	local size round entry id label a b
	for size in $SIZES; do
		for ((round = 1; round <= RUNS; round++)); do
			for entry in "${list[@]}"; do
				IFS='|' read -r id label a b <<<"$entry"
				if [[ $entry == *'|'*'|'*'|'* ]]; then
					selected "$id" && measure "$id/$size" "$b" "$size" "$a"
				else
					selected "$id" && measure "$id/$size" "$a" "$size" ""
				fi
			done
		done
		for entry in "${list[@]}"; do
			summarize "${entry%%|*}/$size" "$size"
		done
	done
}

rounds CONSUMERS
if ((POST)); then
	queue_at mangle POSTROUTING
	rounds POST_CONSUMERS
	queue_at filter OUTPUT
fi
# With GSO the sink receives 32 datagrams per queued packet: on the consumer's
# CPU it would cap the gain, and the GSO sender leaves its own CPU mostly idle.
if ((GSO)); then
	taskset -pc "$GSO_SINK_CPU" "$SINK_PID" >/dev/null
	rounds GSO_CONSUMERS
fi

if ((FLOWS)); then
	taskset -pc "$SINK_CPU" "$SINK_PID" >/dev/null
	SIZES_ALL=$SIZES SIZES=${SIZES%% *}
	rounds FLOW_CONSUMERS
	SIZES=$SIZES_ALL
fi

if ((BLOCKLIST)) && { selected bl-accept || selected blocklist; }; then
	LUA_PATH='lua/?.lua;spec/?.lua;;' luajit -e \
		"require('helpers.names').write_names('$TMP/blocklist.txt', 1000000, 1)"
	SIZES_ALL=$SIZES SIZES=${SIZES%% *}
	rounds BLOCKLIST_CONSUMERS
	SIZES=$SIZES_ALL
	BLOCKLIST_LOAD=$(grep -ho 'blocklist: [0-9]* names from [^(]*([^)]*)' "$TMP"/blocklist-*.log 2>/dev/null | tail -n 1)
	# The same script and list without the kernel (bench/blocklist.lua).
	BLOCKLIST_COST=$(LUA_PATH='lua/?.lua;spec/?.lua;;' LUA_CPATH='lua/?.so;;' taskset -c "$CONS_CPU" \
		luajit bench/blocklist.lua "$TMP/blocklist.txt" 2>/dev/null) ||
		BLOCKLIST_COST="bench/blocklist.lua failed: $BLOCKLIST_COST"
fi

if ((GENEVA)) && { selected tcp-accept || selected geneva-dup-tcp || selected geneva-frag-tcp; }; then
	iptables -w -A OUTPUT -o lo -p tcp --dport "$PORT" -j NFQUEUE --queue-num "$QUEUE"
	iptables -w -t raw -A PREROUTING -i lo -p tcp --dport "$PORT" -j DROP
	SIZES_ALL=$SIZES SIZES=${SIZES%% *}
	rounds GENEVA_CONSUMERS
	SIZES=$SIZES_ALL
	# Packets in and out of the last window of each strategy (its counters at stop).
	declare -A GENEVA_IO
	for id in geneva-dup-tcp geneva-frag-tcp; do
		GENEVA_IO[$id]=$(grep -ho 'geneva: packets=.*' "$TMP/$id-${SIZES%% *}.log" 2>/dev/null |
			awk '{for (i = 2; i <= NF; i++) {split($i, kv, "="); c[kv[1]] = kv[2]}}
				END {if (c["packets"]) printf "%.2f%s", c["sent"] / c["packets"], c["send_errors"] ? " (" c["send_errors"] " send errors)" : ""}')
	done
	iptables -w -t raw -D PREROUTING -i lo -p tcp --dport "$PORT" -j DROP
	iptables -w -D OUTPUT -o lo -p tcp --dport "$PORT" -j NFQUEUE --queue-num "$QUEUE"
fi

# The Lua side alone, without the kernel: dispatch and verdict code on a
# batch we fill ourselves (bench/dispatch_cost.lua).
DISPATCH_COST=$(LUA_PATH='lua/?.lua;spec/?.lua;;' LUA_CPATH='lua/?.so;;' taskset -c "$CONS_CPU" luajit bench/dispatch_cost.lua 2>&1) ||
	DISPATCH_COST="bench/dispatch_cost.lua failed: $DISPATCH_COST"
# The flow table's Lua side alone, over 10 and 100,000 flows (bench/flows_cost.lua).
if ((FLOWS)); then
	FLOWS_COST=$(LUA_PATH='lua/?.lua;spec/?.lua;;' LUA_CPATH='lua/?.so;;' taskset -c "$CONS_CPU" luajit bench/flows_cost.lua 2>&1) ||
		FLOWS_COST="bench/flows_cost.lua failed: $FLOWS_COST"
fi
# The name parsers alone, on messages in memory (bench/names.lua).
NAMES_COST=$(LUA_PATH='lua/?.lua;;' LUA_CPATH='lua/?.so;;' taskset -c "$CONS_CPU" luajit bench/names.lua 2>&1) ||
	NAMES_COST="bench/names.lua failed: $NAMES_COST"

# --- The report. ---------------------------------------------------------
table_header() {
	echo "| payload | consumer | verdicts/s (median) | min–max | vs C ref | vs marking C ref | CPU µs/pkt | consumer CPU busy | kernel drops (queue full / socket full) | peak RSS |"
	echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
}
# consumer_row ENTRY SIZE REF_ID: one consumer's line, ratios to REF_ID's.
consumer_row() {
	local id label cmd k ratio ratio_mark mk drops_pct
	IFS='|' read -r id label cmd <<<"$1"
	k="$id/$2"
	selected "$id" || return 0
	if [[ -n ${R_NOTE[$k]:-} ]]; then
		echo "| $2 B | $label | — | — | — | — | — | — | ${R_NOTE[$k]} | — |"
		return
	fi
	ratio="—"
	[[ -n ${R_PPS[$3/$2]:-} && ${R_PPS[$3/$2]} != 0 ]] &&
		ratio=$(awk -v a="${R_PPS[$k]}" -v b="${R_PPS[$3/$2]}" 'BEGIN {printf "%.2f", a / b}')
	# The marking filters against the C reference that marks too: the
	# kernel re-routes a packet whose mark changed, for either consumer.
	ratio_mark="—"
	mk="ref-mark/$2"
	[[ $id == filter || $id == lib ]] && [[ -n ${R_PPS[$mk]:-} && ${R_PPS[$mk]} != 0 ]] &&
		ratio_mark=$(awk -v a="${R_PPS[$k]}" -v b="${R_PPS[$mk]}" 'BEGIN {printf "%.2f", a / b}')
	drops_pct=$(awk -v d=$((R_QDROP[$k] + R_UDROP[$k])) -v s="${R_SENT[$k]}" 'BEGIN {printf "%.0f", s ? 100 * d / s : 0}')
	echo "| $2 B | $label | $(fmt "${R_PPS[$k]}") | $(fmtk "${R_MIN[$k]}")–$(fmtk "${R_MAX[$k]}") | $ratio | $ratio_mark | ${R_CPU[$k]} | ${R_BUSY[$k]}% | ${R_QDROP[$k]} / ${R_UDROP[$k]} (${drops_pct}% of sent) | ${R_RSS[$k]} MB |"
}

# make soak, make bench-scale and bench/send.sh append their own sections: keep them.
APPENDED=$(awk '/^## (Soak|Scaling|Sending)/ {keep = 1} keep' "$OUT" 2>/dev/null || true)
ELAPSED=$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.0f", b - a}')
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
ref_id=$(cut -d'|' -f1 <<<"${CONSUMERS[0]}")
{
	echo "# nfqlua benchmark"
	echo
	echo "$(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs ($CPU_MODEL); kernel $(uname -r); $(luajit -v 2>/dev/null | cut -d' ' -f1-2)."
	echo "Generated by \`bench/run.sh\` in ${ELAPSED} s: UDP over loopback in a private namespace, queued in OUTPUT (\`-o lo\`), generator (sendmmsg, batch $GEN_BATCH) on CPU $GEN_CPU,"
	echo "consumer on CPU $CONS_CPU, queue length $MAXLEN for every consumer. Each figure: $RUNS windows of ${WINDOW} s after ${WARM} s of warm-up, one per round; each round runs every consumer once, so slow drift of the machine reaches all of them."
	((IDLE_OK)) || echo "**Warning:** the machine was not idle when the run started ($BUSY_BEFORE busy with other work); these figures are not representative."
	echo
	table_header
	for size in $SIZES; do
		for entry in "${CONSUMERS[@]}"; do
			consumer_row "$entry" "$size" "$ref_id"
		done
	done
	post_ref=$(cut -d'|' -f1 <<<"${POST_CONSUMERS[0]}")
	if ((POST)) && [[ -n ${R_PPS[$post_ref/${SIZES%% *}]:-} ]]; then
		echo
		echo "Where the queue sits: in OUTPUT, a packet whose mark changed is routed again when its verdict comes (\`ip_route_me_harder\`:"
		echo "route and xfrm lookups), for any consumer; that is what the marking C reference above pays. After routing"
		echo "(\`-t mangle -A POSTROUTING\`) a mark does not re-route: the same filter, marking every packet, against the C reference"
		echo "on that hook, in rounds of their own. A consumer that keeps up with the sender (no queue-full drops to speak of)"
		echo "gets the sender's rate, so there CPU µs/pkt shows what the filter costs more than C:"
		echo
		table_header
		for size in $SIZES; do
			for entry in "${POST_CONSUMERS[@]}"; do
				consumer_row "$entry" "$size" "$post_ref"
			done
		done
	fi
	gso_base=$(cut -d'|' -f1 <<<"${GSO_CONSUMERS[0]}")
	if ((GSO)) && [[ -n ${!R_DPS[*]} ]]; then
		echo
		echo "UDP GSO: the GSO sender sends 32 segments of the payload size per send (UDP_SEGMENT). The sink counts the datagrams"
		echo "delivered; for this table it runs on CPU $GSO_SINK_CPU, with the generator."
		echo
		echo "| payload | consumer | sender | datagrams/s delivered (median) | queue packets/s | vs plain sender |"
		echo "|---|---|---|---:|---:|---:|"
		for size in $SIZES; do
			base=${R_DPS[$gso_base/$size]:-}
			for entry in "${GSO_CONSUMERS[@]}"; do
				IFS='|' read -r id label gflags cmd <<<"$entry"
				k="$id/$size"
				[[ -n ${R_DPS[$k]:-} ]] || continue
				ratio="—"
				[[ -n $base && $base != - && ${R_DPS[$k]} != - ]] &&
					ratio=$(awk -v a="${R_DPS[$k]}" -v b="$base" 'BEGIN {printf "%.2f", a / b}')
				sender=plain; [[ $gflags == *-g* ]] && sender="GSO ×32"
				echo "| $size B | $label | $sender | $(fmt "${R_DPS[$k]}") | $(fmt "${R_PPS[$k]}") | $ratio |"
			done
		done
	fi
	flow_size=${SIZES%% *}
	if ((FLOWS)) && [[ -n ${R_PPS[flows-10/$flow_size]:-} ]]; then
		echo
		echo "The flow table (\`bench/flows.lua\`: \`flows:state(pkt)\`, a counter and a verdict in the flow's state) against accept_all.lua,"
		echo "both fed over the same flows (the generator takes turns over that many source addresses), in rounds of their own:"
		echo
		echo "| payload | consumer | verdicts/s (median) | min–max | vs accept_all, same flows | CPU µs/pkt | peak RSS |"
		echo "|---|---|---:|---:|---:|---:|---:|"
		for n in 10 100k; do
			for id in flows-accept-$n flows-$n; do
				k="$id/$flow_size"
				[[ -n ${R_PPS[$k]:-} ]] || continue
				ratio=$(ratio "${R_PPS[$k]}" "${R_PPS[flows-accept-$n/$flow_size]:-}")
				label=$(label_of "$id" "${FLOW_CONSUMERS[@]}")
				echo "| $flow_size B | $label | $(fmt "${R_PPS[$k]}") | $(fmtk "${R_MIN[$k]}")–$(fmtk "${R_MAX[$k]}") | $ratio | ${R_CPU[$k]} | ${R_RSS[$k]} MB |"
			done
		done
		echo
		echo "The same filters without the kernel (\`bench/flows_cost.lua\`: batches of 64 through the module's dispatch, each packet's"
		echo "source port turning over the flows), on CPU $CONS_CPU:"
		echo
		echo "$FLOWS_COST"
	fi
	bl_size=${SIZES%% *}
	if ((BLOCKLIST)) && [[ -n ${R_PPS[blocklist/$bl_size]:-} ]]; then
		echo
		echo "The blocklist example (\`scripts/examples/blocklist.lua\`) with a list of 1,000,000 random names, against accept_all.lua,"
		echo "both fed DNS queries (A, 25 to 52 bytes) for 4096 random names not on the list (\`gen -D\`), in rounds of their own:"
		echo "each query parsed (\`nfq.dns\`), its name looked up (\`domainset:match\` by pointer), accepted."
		echo "Its load: \`${BLOCKLIST_LOAD:-?}\` (CPU time, C memory of the set)."
		echo
		echo "| consumer | verdicts/s (median) | min–max | vs accept_all | CPU µs/pkt | peak RSS |"
		echo "|---|---:|---:|---:|---:|---:|"
		for id in bl-accept blocklist; do
			k="$id/$bl_size"
			[[ -n ${R_PPS[$k]:-} ]] || continue
			ratio=$(ratio "${R_PPS[$k]}" "${R_PPS[bl-accept/$bl_size]:-}")
			label=$(label_of "$id" "${BLOCKLIST_CONSUMERS[@]}")
			echo "| $label | $(fmt "${R_PPS[$k]}") | $(fmtk "${R_MIN[$k]}")–$(fmtk "${R_MAX[$k]}") | $ratio | ${R_CPU[$k]} | ${R_RSS[$k]} MB |"
		done
		echo
		echo "The same without the kernel (\`bench/blocklist.lua\`: the same list, DNS queries for 4096 names not on it through the"
		echo "module's dispatch), on CPU $CONS_CPU; the lookup in a million-name set is most of the difference (cache misses, see the sets' table):"
		echo
		echo "$BLOCKLIST_COST"
	fi
	gv_size=${SIZES%% *}
	if ((GENEVA)) && [[ -n ${R_PPS[tcp-accept/$gv_size]:-} ]]; then
		echo
		echo "The issue's two Geneva strategies (\`scripts/examples/geneva.lua\`, \`--no-gso --send --send-mark 0x1/0x1\`) on TCP segments they"
		echo "match (\`gen -T\`: flags PA, $gv_size bytes of payload, through a raw socket), against accept_all.lua on the same segments, in"
		echo "rounds of their own. Each queued segment is dropped and replaced by the packets the strategy sends (with the send mark, which"
		echo "skips the queue); the segments and those packets are dropped as they arrive on lo (raw PREROUTING: no routing, no RST). Input packets/s are verdicts/s:"
		echo
		echo "| payload | consumer | input packets/s (median) | min–max | vs accept_all | packets sent per input | CPU µs/pkt | peak RSS |"
		echo "|---|---|---:|---:|---:|---:|---:|---:|"
		for id in tcp-accept geneva-dup-tcp geneva-frag-tcp; do
			k="$id/$gv_size"
			[[ -n ${R_PPS[$k]:-} ]] || continue
			ratio=$(ratio "${R_PPS[$k]}" "${R_PPS[tcp-accept/$gv_size]:-}")
			label=$(label_of "$id" "${GENEVA_CONSUMERS[@]}")
			echo "| $gv_size B | $label | $(fmt "${R_PPS[$k]}") | $(fmtk "${R_MIN[$k]}")–$(fmtk "${R_MAX[$k]}") | $ratio | ${GENEVA_IO[$id]:-—} | ${R_CPU[$k]} | ${R_RSS[$k]} MB |"
		done
	fi
	echo
	echo "How it is measured: verdicts/s is the growth of the queue's id sequence in \`$PROC_Q\`, less netlink-full drops and"
	echo "packets still queued, over each window. CPU µs/pkt is the consumer's utime+stime (/proc/PID/stat, all threads) over the"
	echo "windows divided by the packets verdicted in them; loopback delivery after an accept runs as softirq on the consumer's CPU"
	echo "and is not all charged to the process, so \"consumer CPU busy\" (that CPU in /proc/stat) shows whether the consumer's CPU was the"
	echo "bottleneck. Peak RSS is VmHWM just before the consumer is stopped."
	echo
	echo "The sender is open-loop with a $((GEN_SNDBUF >> 20)) MiB send buffer (queued packets are charged to it until their verdict),"
	echo "so a consumer slower than the sender shows queue-full drops; socket-full drops would mean a too small receive buffer."
	echo "The sink that drains the port shares the consumer's CPU (CPU $SINK_CPU): on 2 CPUs the generator needs its own to outrun the"
	echo "consumers. That work is the same for every consumer, so the ratios understate the differences in the consumers' own cost;"
	echo "CPU µs/pkt shows those."
	echo
	echo "What the Lua side costs per packet without the kernel (\`bench/dispatch_cost.lua\`: batches of 64 IPv4/UDP packets through"
	echo "the module's dispatch, the filter and the verdict code, the verdicts sent to a queue nobody bound), on CPU $CONS_CPU:"
	echo
	echo "$DISPATCH_COST"
	echo
	echo "What the name parsers cost per call on a message in memory (\`bench/names.lua\`), on CPU $CONS_CPU:"
	echo
	echo "$NAMES_COST"
	if selected ruby || selected go; then
		echo
		echo "The consumers people would pick instead: an accept-all of a few lines on each Debian package (\`bench/consumers/\`),"
		echo "queue length $MAXLEN set through the binding. Both give one verdict per packet, in one sendmsg each, with no batch; neither"
		echo "can set the netlink socket's receive buffer or NFQA_CFG_F_GSO, so when the sender outruns them the kernel drops at the"
		echo "full socket rather than at the full queue."
		if selected ruby; then
			echo "- **Ruby: ruby-nfqueue $(pkg_version ruby-nfqueue)** on ruby $(ruby -e 'print RUBY_VERSION' 2>/dev/null || echo '?') (\`accept.rb\`). \`Netfilter::Queue#process\` reads one packet per"
			echo "  \`read(2)\` into a fixed 4096-byte buffer and calls the block through an FFI callback; the binding then copies the payload"
			echo "  into a Ruby string and sends it back with the verdict (\`nfq_set_verdict\` with the data), so the kernel rewrites every"
			echo "  packet with its own bytes. A packet whose message exceeds 4096 bytes (payload above about 4 KB) is cut short, never gets"
			echo "  a verdict and stalls the queue. The binding does not set NETLINK_NO_ENOBUFS, and the first socket overflow ends"
			echo "  \`process\` with Errno::ENOBUFS: the script sets it on the descriptor itself."
		fi
		if selected go; then
			echo "- **Go: nfqueue-go (chifflier) $(pkg_version golang-github-chifflier-nfqueue-go-dev)** built with Debian's $(go version 2>/dev/null | cut -d' ' -f3) in GOPATH mode, offline (\`accept.go\`)."
			echo "  \`Queue.Loop\` is a C loop of \`select\` (500 ms timeout) and one \`recv\` per packet into a 65535-byte buffer, with a cgo call"
			echo "  into Go per packet that copies the payload (\`C.GoBytes\`) into a new \`Payload\`, then \`SetVerdict\`: one \`nfq_set_verdict\`"
			echo "  per packet. It sets NETLINK_NO_ENOBUFS. The binding logs every verdict through package \`log\`: the consumer discards"
			echo "  that (\`log.SetOutput(io.Discard)\`). It hands the Queue to C as a bare Go pointer, so the program must keep it reachable"
			echo "  while \`Loop\` runs, or the garbage collector frees it and the next packet crashes the process."
		fi
	fi
	if [[ -n $APPENDED ]]; then
		echo
		echo "$APPENDED"
	fi
} >"$OUT"
cat "$OUT"

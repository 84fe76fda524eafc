/*
 * nfq_daemon.c: the daemon: flags, signals and logging over the engine.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <ev.h>
#include <linux/capability.h>

#include "nfq_log.h"
#include "nfq_metrics_server.h"
#include "nfq_replay.h"
#include "nfq_workers.h"
#include "nfq_engine.h"

#define NFQLUA_VERSION nfq_version()

enum { EXIT_USAGE = 2 };

static const char usage[] =
	"usage: nfqlua SCRIPT --queue N [options]\n"
	"       nfqlua --replay CAPTURE SCRIPT [--out KEPT] [--hook HOOK] [--mark M] [options]\n"
	"       nfqlua SCRIPT --check [options]\n"
	"\n"
	"Filter the packets that an iptables -j NFQUEUE rule sends to queue N\n"
	"with the Lua function that SCRIPT returns.\n"
	"\n"
	"  -q, --queue N|A-B      queue number, 0..65535, or a range of up to 64 queues,\n"
	"                         one worker thread each (required)\n"
	"      --max-len N        kernel queue length in packets (default 1024)\n"
	"      --mode packet|meta copy whole packets or metadata only (default packet)\n"
	"      --range N          bytes copied per packet, 1..65535 (default 65535);\n"
	"                         the kernel copies at most 65531\n"
	"      --sock-len BYTES   netlink receive buffer (default: sized from --max-len)\n"
	"      --fallback accept|drop\n"
	"                         verdict for packets the script leaves without one\n"
	"                         (errors, forgotten packets, shutdown; default accept)\n"
	"      --fail-open        when the queue is full, the kernel accepts instead of dropping\n"
	"      --no-gso           have the kernel segment GSO packets before queueing them\n"
	"      --conntrack        add connection tracking data (pkt.ct_state, set_connmark)\n"
	"      --uid-gid          add the socket owner of local traffic (pkt.uid, pkt.gid)\n"
	"      --secctx           add the security context (pkt.secctx)\n"
	"      --lua-mem-limit BYTES  memory each script's Lua state may use; past it the\n"
	"                         script gets a memory error (default: no limit)\n"
	"      --script-timeout MS  interrupt a call into the script that runs longer\n"
	"                         (its packet gets the fallback verdict); default: none\n"
	"      --check            load and compile SCRIPT, then exit; goes with\n"
	"                         --lua-mem-limit, --script-timeout, --user and logging\n"
	"      --replay CAPTURE   run SCRIPT over a pcap/pcapng file instead of a queue:\n"
	"                         one line per verdict and a summary; needs no root;\n"
	"                         goes with --mode, --range, --fallback, --conntrack,\n"
	"                         --lua-mem-limit, --script-timeout, --user and logging\n"
	"      --out KEPT         with --replay: write the accepted packets to KEPT (pcap)\n"
	"      --hook HOOK        with --replay: prerouting, input (default), forward,\n"
	"                         output or postrouting\n"
	"      --mark M           with --replay: the mark packets arrive with\n"
	"      --user NAME        give up root before binding and loading SCRIPT: run as\n"
	"                         NAME, keeping only CAP_NET_ADMIN (which verdicts need)\n"
	"      --send             let the script send packets (nfq.send, pkt:reject): raw\n"
	"                         sockets opened at start, before --user (with --replay:\n"
	"                         sent packets are printed and written to --out)\n"
	"      --send-mark MARK[/MASK]  with --send: the mark sent packets leave with; a\n"
	"                         script's own mark keeps the bits of MASK from MARK\n"
	"      --bypass-mark MARK[/MASK]  what pkt:bypass() sets in the packet's mark:\n"
	"                         the bits of MASK (default: MARK's) to MARK's, for the\n"
	"                         CONNMARK rules that skip the queue (default 0x40000000)\n"
	"      --metrics ADDR     serve Prometheus metrics at http://ADDR/metrics, ADDR\n"
	"                         being IPv4:PORT, [IPv6]:PORT or unix:PATH\n"
	"                         (as 127.0.0.1:9640); bound before --user\n"
	"      --pidfile PATH     write the pid to PATH once every queue is bound;\n"
	"                         removed at exit\n"
	"      --syslog           log to syslog (facility daemon) instead of stderr\n"
	"      --log-level LEVEL  error, warn, info (default) or debug\n"
	"  -v, --verbose          log at debug level, with Lua tracebacks\n"
	"      --version          print the version and exit\n"
	"  -h, --help             print this help and exit\n"
	"\n"
	"A flag may be given once (-v more: each raises the level); one that has no\n"
	"effect in a run (--queue with --replay, --hook without it) is refused.\n"
	"\n"
	"Signals: SIGHUP reloads SCRIPT (a broken version is refused, the running one\n"
	"stays); SIGUSR1 logs the counters; SIGINT and SIGTERM stop after giving held\n"
	"packets the fallback verdict (a second one exits at once).\n";

struct cli {
	struct nfq_engine_opts engine;
	int check;
	int have_queue;
	uint32_t last_queue;	/* --queue A-B: queue_num is A, last_queue is B */
	const char *pidfile;
	const char *metrics;	/* --metrics ADDR */
	const char *user;	/* --user */
	int syslog;
	int send;		/* --send */
	int have_send_mark;
	uint32_t send_mark, send_mask;	/* --send-mark MARK[/MASK] */
	struct nfq_replay_opts replay;	/* with --replay */
};


/*
 * The pidfile: written to a new file beside PATH before the queues are bound,
 * renamed over PATH once they all are, removed at exit only while PATH is
 * still that file.
 */
static struct {
	const char *path;
	char *tmp;		/* the new file, until it is renamed over path */
	dev_t dev;		/* the file this process wrote */
	ino_t ino;
} pidfile;

__attribute__((format(printf, 1, 2), noreturn))
static void usage_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "nfqlua: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, " (see nfqlua --help)\n");
	va_end(ap);
	exit(EXIT_USAGE);
}

static unsigned long parse_number(const char *flag, const char *s, unsigned long lo, unsigned long hi)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (*s < '0' || *s > '9' || *end || errno || v < lo || v > hi)
		usage_error("%s must be a number from %lu to %lu, got '%s'", flag, lo, hi, s);
	return v;
}

/* The runs a flag has an effect in: the daemon, --replay, --check. */
enum { LIVE = 1, REPLAY = 2, CHECK = 4, ANY = LIVE | REPLAY | CHECK };

struct choice {
	const char *word;
	uint32_t value;
};

/*
 * A command-line flag. set() stores its value (NULL for a switch) at field:
 * a number within lo..hi, one of the choices' words, a queue flag bit.
 * expect says what a bad value should have been.
 */
struct flag {
	const char *name;
	char letter;		/* its short form, or 0 */
	int has_arg;		/* VALUE or SWITCH */
	unsigned modes;		/* the runs it has an effect in */
	int repeats;		/* may be given more than once */
	void (*set)(struct cli *cli, const struct flag *f, const char *value);
	size_t field, size;
	unsigned long lo, hi;
	uint32_t bit;
	const struct choice *choices;
	const char *expect;
};

enum { SWITCH = no_argument, VALUE = required_argument };

#define FIELD(member) .field = offsetof(struct cli, member), .size = sizeof(((struct cli *)0)->member)
#define AT(cli, f, type) ((type *)(void *)((char *)(cli) + (f)->field))

static void set_number(struct cli *cli, const struct flag *f, const char *value)
{
	char name[32];
	snprintf(name, sizeof name, "--%s", f->name);
	unsigned long v = parse_number(name, value, f->lo, f->hi);
	if (f->size == sizeof(size_t))
		*AT(cli, f, size_t) = v;
	else
		*AT(cli, f, uint32_t) = (uint32_t)v;
}

static uint32_t choose(const struct flag *f, const char *value)
{
	for (const struct choice *c = f->choices; c->word; c++)
		if (strcmp(value, c->word) == 0)
			return c->value;
	usage_error("--%s must be %s, got '%s'", f->name, f->expect, value);
}

static void set_choice(struct cli *cli, const struct flag *f, const char *value)
{
	*AT(cli, f, uint32_t) = choose(f, value);
}

static void set_text(struct cli *cli, const struct flag *f, const char *value)
{
	if (!*value)
		usage_error("--%s needs %s", f->name, f->expect);
	*AT(cli, f, const char *) = value;
}

static void set_true(struct cli *cli, const struct flag *f, const char *value)
{
	(void)value;
	*AT(cli, f, int) = 1;
}

static void set_bit(struct cli *cli, const struct flag *f, const char *value)
{
	(void)value;
	*AT(cli, f, uint32_t) |= f->bit;
}

static void clear_bit(struct cli *cli, const struct flag *f, const char *value)
{
	(void)value;
	*AT(cli, f, uint32_t) &= ~f->bit;
}

/* N, or A-B for a range of up to NFQ_MAX_WORKERS queues. */
static void set_queues(struct cli *cli, const struct flag *f, const char *value)
{
	(void)f;
	char first[16];
	const char *dash = strchr(value, '-');
	cli->have_queue = 1;
	if (!dash || dash == value || (size_t)(dash - value) >= sizeof first) {
		cli->engine.queue_num = cli->last_queue = (uint32_t)parse_number("--queue", value, 0, 65535);
		return;
	}
	snprintf(first, sizeof first, "%.*s", (int)(dash - value), value);
	cli->engine.queue_num = (uint32_t)parse_number("--queue", first, 0, 65535);
	cli->last_queue = (uint32_t)parse_number("--queue", dash + 1, 0, 65535);
	if (cli->last_queue < cli->engine.queue_num || cli->last_queue - cli->engine.queue_num >= NFQ_MAX_WORKERS)
		usage_error("--queue A-B needs A <= B and at most %d queues, got '%s'", NFQ_MAX_WORKERS, value);
}

/* A mark in decimal or 0x hex, part of f's MARK[/MASK] value whole. */
static uint32_t parse_mark(const struct flag *f, const char *s, const char *whole)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 0);
	if (*s < '0' || *s > '9' || *end || errno || v > UINT32_MAX)
		usage_error("--%s must be MARK or MARK/MASK, numbers from 0 to 0xffffffff, got '%s'", f->name, whole);
	return (uint32_t)v;
}

/* f's MARK[/MASK] value into mark and mask; whether MASK was given. */
static int parse_mark_mask(const struct flag *f, const char *value, uint32_t *mark, uint32_t *mask)
{
	char first[32];
	const char *slash = strchr(value, '/');
	if (slash && (size_t)(slash - value) >= sizeof first)
		usage_error("--%s must be MARK or MARK/MASK, numbers from 0 to 0xffffffff, got '%s'", f->name, value);
	snprintf(first, sizeof first, "%.*s", slash ? (int)(slash - value) : (int)strlen(value), value);
	*mark = parse_mark(f, first, value);
	*mask = slash ? parse_mark(f, slash + 1, value) : 0;
	return slash != NULL;
}

/* MARK[/MASK]: without MASK, a script's own mark replaces MARK whole. */
static void set_send_mark(struct cli *cli, const struct flag *f, const char *value)
{
	parse_mark_mask(f, value, &cli->send_mark, &cli->send_mask);
	cli->have_send_mark = 1;
}

/* MARK[/MASK]: without MASK, the bits of MARK are set and the others kept. */
static void set_bypass_mark(struct cli *cli, const struct flag *f, const char *value)
{
	uint32_t mark, mask;
	if (!parse_mark_mask(f, value, &mark, &mask))
		mask = mark;
	if (!mask)
		usage_error("--bypass-mark %s sets no bit: give a MARK with a bit set, such as 0x40000000", value);
	if (mark & ~mask)
		usage_error("--bypass-mark %s: MARK has bits outside MASK; give MARK/MASK with MARK inside MASK", value);
	cli->engine.bypass_mark = mark;
	cli->engine.bypass_mask = mask;
}

static void set_metrics(struct cli *cli, const struct flag *f, const char *value)
{
	(void)f;
	char err[256];
	if (nfq_metrics_check_addr(value, err, sizeof err) < 0)
		usage_error("%s", err);
	cli->metrics = value;
}

static void set_log_level(struct cli *cli, const struct flag *f, const char *value)
{
	(void)cli;
	nfq_log_level = (int)choose(f, value);
}

static void raise_log_level(struct cli *cli, const struct flag *f, const char *value)
{
	(void)cli;
	(void)f;
	(void)value;
	if (nfq_log_level < NFQ_LOG_DEBUG)
		nfq_log_level++;
}

static void print_version(struct cli *cli, const struct flag *f, const char *value)
{
	(void)cli;
	(void)f;
	(void)value;
	printf("nfqlua %s\n", NFQLUA_VERSION);
	exit(0);
}

static void print_help(struct cli *cli, const struct flag *f, const char *value)
{
	(void)cli;
	(void)f;
	(void)value;
	fputs(usage, stdout);
	exit(0);
}

static const struct choice copy_modes[] = { { "packet", NFQ_COPY_PACKET }, { "meta", NFQ_COPY_META }, { 0 } };
static const struct choice fallbacks[] = { { "accept", NFQ_ACCEPT }, { "drop", NFQ_DROP }, { 0 } };
static const struct choice hooks[] = {
	{ "prerouting", NFQ_HOOK_PREROUTING }, { "input", NFQ_HOOK_INPUT }, { "forward", NFQ_HOOK_FORWARD },
	{ "output", NFQ_HOOK_OUTPUT }, { "postrouting", NFQ_HOOK_POSTROUTING }, { 0 }
};
static const struct choice log_levels[] = {
	{ "error", NFQ_LOG_ERROR }, { "warn", NFQ_LOG_WARN }, { "info", NFQ_LOG_INFO }, { "debug", NFQ_LOG_DEBUG },
	{ 0 }
};

/* Each value is parsed as it comes; whether a flag goes with the run is checked once all are in. */
static const struct flag flags[] = {
	{ "queue", 'q', VALUE, LIVE, .set = set_queues },
	{ "max-len", 0, VALUE, LIVE, .set = set_number, FIELD(engine.max_len), .lo = 1, .hi = UINT32_MAX },
	{ "mode", 0, VALUE, LIVE | REPLAY, .set = set_choice, FIELD(engine.mode), .choices = copy_modes,
	  .expect = "'packet' or 'meta'" },
	{ "range", 0, VALUE, LIVE | REPLAY, .set = set_number, FIELD(engine.range), .lo = 1, .hi = 65535 },
	{ "sock-len", 0, VALUE, LIVE, .set = set_number, FIELD(engine.sock_len), .lo = 4096, .hi = INT32_MAX },
	{ "fallback", 0, VALUE, LIVE | REPLAY, .set = set_choice, FIELD(engine.fallback), .choices = fallbacks,
	  .expect = "'accept' or 'drop'" },
	{ "fail-open", 0, SWITCH, LIVE, .set = set_bit, FIELD(engine.flags), .bit = NFQ_FLAG_FAIL_OPEN },
	{ "no-gso", 0, SWITCH, LIVE, .set = clear_bit, FIELD(engine.flags), .bit = NFQ_FLAG_GSO },
	/* --replay too: it lets the script set connection marks. */
	{ "conntrack", 0, SWITCH, LIVE | REPLAY, .set = set_bit, FIELD(engine.flags), .bit = NFQ_FLAG_CONNTRACK },
	{ "uid-gid", 0, SWITCH, LIVE, .set = set_bit, FIELD(engine.flags), .bit = NFQ_FLAG_UID_GID },
	{ "secctx", 0, SWITCH, LIVE, .set = set_bit, FIELD(engine.flags), .bit = NFQ_FLAG_SECCTX },
	{ "lua-mem-limit", 0, VALUE, ANY, .set = set_number, FIELD(engine.lua_mem_limit),
	  .lo = 1 << 20, .hi = UINT32_MAX },
	{ "script-timeout", 0, VALUE, ANY, .set = set_number, FIELD(engine.script_timeout_ms),
	  .lo = 1, .hi = 3600000 },
	{ "check", 0, SWITCH, CHECK, .set = set_true, FIELD(check) },
	{ "replay", 0, VALUE, REPLAY, .set = set_text, FIELD(replay.capture), .expect = "a capture file" },
	{ "out", 0, VALUE, REPLAY, .set = set_text, FIELD(replay.out), .expect = "a path" },
	{ "hook", 0, VALUE, REPLAY, .set = set_choice, FIELD(replay.hook), .choices = hooks,
	  .expect = "prerouting, input, forward, output or postrouting" },
	{ "mark", 0, VALUE, REPLAY, .set = set_number, FIELD(replay.mark), .lo = 0, .hi = UINT32_MAX },
	/* Any run: the script then runs as that user. */
	{ "user", 0, VALUE, ANY, .set = set_text, FIELD(user), .expect = "a user name" },
	/* --replay too: the script may send, and the sent packets are shown. */
	{ "send", 0, SWITCH, LIVE | REPLAY, .set = set_true, FIELD(send) },
	{ "send-mark", 0, VALUE, LIVE | REPLAY, .set = set_send_mark },
	{ "bypass-mark", 0, VALUE, LIVE | REPLAY, .set = set_bypass_mark },
	{ "pidfile", 0, VALUE, LIVE, .set = set_text, FIELD(pidfile), .expect = "a path" },
	{ "metrics", 0, VALUE, LIVE, .set = set_metrics },
	{ "syslog", 0, SWITCH, ANY, .set = set_true, FIELD(syslog) },
	{ "log-level", 0, VALUE, ANY, .set = set_log_level, .choices = log_levels,
	  .expect = "error, warn, info or debug" },
	{ "verbose", 'v', SWITCH, ANY, .repeats = 1, .set = raise_log_level },
	{ "version", 0, SWITCH, ANY, .set = print_version },
	{ "help", 'h', SWITCH, ANY, .set = print_help },
};

enum { N_FLAGS = sizeof flags / sizeof flags[0], FLAG_ID = 256 };

static const struct flag *flag_for(int c)
{
	if (c >= FLAG_ID && c < FLAG_ID + N_FLAGS)
		return &flags[c - FLAG_ID];
	for (const struct flag *f = flags; f < flags + N_FLAGS; f++)
		if (f->letter == c)
			return f;
	return NULL;
}

/* Refuse a flag that would do nothing in this run. */
static void check_modes(const struct cli *cli, const unsigned *given)
{
	unsigned run = cli->replay.capture ? REPLAY : cli->check ? CHECK : LIVE;
	for (const struct flag *f = flags; f < flags + N_FLAGS; f++) {
		if (!given[f - flags] || (f->modes & run))
			continue;
		if (f->modes == REPLAY)
			usage_error("--%s has no effect without --replay: --out, --hook and --mark go with --replay",
				    f->name);
		usage_error("--%s has no effect with --%s: leave it out", f->name, run == REPLAY ? "replay" : "check");
	}
	if (run == LIVE && !cli->have_queue)
		usage_error("--queue N is required");
	if (cli->have_send_mark && !cli->send)
		usage_error("--send-mark goes with --send: add --send, or leave --send-mark out");
}

static void parse_args(int argc, char **argv, struct cli *cli)
{
	struct option options[N_FLAGS + 1] = { { 0 } };
	char letters[2 * N_FLAGS + 2] = ":";
	size_t n_letters = 1;
	unsigned given[N_FLAGS] = { 0 };
	for (int i = 0; i < N_FLAGS; i++) {
		options[i] = (struct option){ flags[i].name, flags[i].has_arg, NULL, FLAG_ID + i };
		if (flags[i].letter)
			letters[n_letters++] = flags[i].letter;
		if (flags[i].letter && flags[i].has_arg == VALUE)
			letters[n_letters++] = ':';
	}
	cli->engine = (struct nfq_engine_opts){ .mode = NFQ_COPY_PACKET, .range = 65535, .max_len = 1024,
						.fallback = NFQ_ACCEPT, .flags = NFQ_FLAG_GSO };
	cli->replay.hook = NFQ_HOOK_INPUT;
	opterr = 0;
	for (int c; (c = getopt_long(argc, argv, letters, options, NULL)) != -1;) {
		const struct flag *f = flag_for(c);
		if (c == ':')
			usage_error("option '%s' needs a value", argv[optind - 1]);
		if (!f)
			usage_error("unknown option '%s'", argv[optind - 1]);
		if (given[f - flags]++ && !f->repeats)
			usage_error("--%s is given twice: give it once", f->name);
		f->set(cli, f, optarg);
	}
	if (optind >= argc)
		usage_error("no SCRIPT given");
	if (optind + 1 < argc)
		usage_error("unexpected argument '%s': give one SCRIPT", argv[optind + 1]);
	cli->engine.script = argv[optind];
	check_modes(cli, given);
}

static void on_stop_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
	(void)revents;
	nfq_log(NFQ_LOG_INFO, "got %s, stopping", strsignal(w->signum));
	nfq_workers_request_stop();
	ev_break(loop, EVBREAK_ALL);
}

static void on_reload_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	nfq_workers_reload();
}

static void on_stats_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	nfq_workers_log_stats();
}

/* The engines' lines go through the daemon's log. */
static void log_line(void *ud, int level, const char *line)
{
	(void)ud;
	nfq_log(level, "%s", line);
}

/*
 * Before binding: write the pid to a new file beside PATH, as the user the
 * daemon runs as (so that it can rename and remove it later). O_EXCL creates
 * it or fails: a symlink planted at that name is never followed.
 */
static int prepare_pidfile(const char *path, const char *user)
{
	size_t len = strlen(path);
	int fd = -1;
	pidfile.tmp = malloc(len + sizeof ".XXXXXX");
	if (pidfile.tmp) {
		memcpy(pidfile.tmp, path, len);
		memcpy(pidfile.tmp + len, ".XXXXXX", sizeof ".XXXXXX");
		fd = mkostemp(pidfile.tmp, O_CLOEXEC);
	}
	struct stat st;
	if (fd < 0 || fchmod(fd, 0644) < 0 || dprintf(fd, "%ld\n", (long)getpid()) < 0 || fstat(fd, &st) < 0) {
		int saved = errno;
		int user_hint = user && (saved == EACCES || saved == EPERM);
		fprintf(stderr, "nfqlua: cannot write pidfile '%s': %s%s%s%s\n", path, strerror(saved),
			user_hint ? " (--user " : "", user_hint ? user : "",
			user_hint ? " must be able to create files in its directory)" : "");
		if (fd >= 0)
			unlink(pidfile.tmp);
		free(pidfile.tmp);
		pidfile.tmp = NULL;
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	pidfile.path = path;
	pidfile.dev = st.st_dev;
	pidfile.ino = st.st_ino;
	return 0;
}

/* Once every queue is bound: the pidfile appears whole, replacing what was at PATH (a symlink too). */
static int place_pidfile(void)
{
	if (rename(pidfile.tmp, pidfile.path) < 0) {
		fprintf(stderr, "nfqlua: cannot write pidfile '%s': %s\n", pidfile.path, strerror(errno));
		return -1;
	}
	free(pidfile.tmp);
	pidfile.tmp = NULL;
	return 0;
}

/*
 * Remove the file this process wrote, and nothing else: a pidfile another
 * nfqlua put at PATH since stays. 0, or -1 with errno. Async-signal-safe.
 */
static int remove_pidfile(void)
{
	struct stat st;
	if (pidfile.tmp)
		return unlink(pidfile.tmp);
	if (!pidfile.path || lstat(pidfile.path, &st) < 0)
		return 0;
	if (st.st_dev != pidfile.dev || st.st_ino != pidfile.ino)
		return 0;
	return unlink(pidfile.path);
}

/* A second SIGINT or SIGTERM while draining: leave now. */
static void exit_now(int sig)
{
	static const char msg[] = "nfqlua: error: second signal during the drain, exiting at once\n";
	if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0)
		_exit(128 + sig);
	remove_pidfile();
	_exit(128 + sig);
}

/*
 * --user: become NAME with CAP_NET_ADMIN as the only capability left, in
 * every set including the bounding one. It runs before any worker thread
 * exists, as capabilities are per thread and threads inherit them; binding
 * and verdicts need CAP_NET_ADMIN and nothing else.
 */
static int drop_privileges(const char *user)
{
	errno = 0;
	struct passwd *pw = getpwnam(user);
	if (!pw) {
		fprintf(stderr, "nfqlua: --user: no user named '%s'%s%s\n", user,
			errno ? ": " : "", errno ? strerror(errno) : "");
		return -1;
	}
	if (geteuid() != 0) {
		fprintf(stderr, "nfqlua: --user needs nfqlua to start as root (it is uid %ld)\n", (long)geteuid());
		return -1;
	}
	for (int cap = 0; prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; cap++)
		if (cap != CAP_NET_ADMIN && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
			goto fail;
	struct __user_cap_header_struct head = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct caps[2] = { 0 };
	caps[0].effective = caps[0].permitted = 1u << CAP_NET_ADMIN;
	if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0 ||
	    initgroups(pw->pw_name, pw->pw_gid) < 0 ||
	    setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) < 0 ||
	    setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) < 0 ||
	    syscall(SYS_capset, &head, caps) < 0 ||
	    prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0)
		goto fail;
	if (setuid(0) == 0) {
		fprintf(stderr, "nfqlua: --user: could get root back after dropping it; refusing to run\n");
		return -1;
	}
	nfq_log(NFQ_LOG_INFO, "running as user %s (uid %ld, gid %ld) with CAP_NET_ADMIN only",
		pw->pw_name, (long)pw->pw_uid, (long)pw->pw_gid);
	return 0;
fail:
	fprintf(stderr, "nfqlua: --user: cannot become '%s': %s\n", user, strerror(errno));
	return -1;
}

/*
 * --send: a sender per queue (raw sockets) for the daemon, opened now, as
 * the raw sockets need CAP_NET_RAW to be opened and not to be used: a
 * --user daemon keeps none. --replay only records what is sent. 0, or -1
 * with the reason printed.
 */
static int open_senders(const struct cli *cli, int live, unsigned n, struct nfq_sender **senders)
{
	for (unsigned i = 0; i < n; i++) {
		senders[i] = nfq_sender_open(cli->send_mark, cli->send_mask, live);
		if (!senders[i]) {
			int saved = errno;
			fprintf(stderr, "nfqlua: --send: cannot open the raw sockets for sending: %s%s\n", strerror(saved),
				saved == EPERM ? " (they need root or CAP_NET_RAW)" : "");
			while (i > 0)
				nfq_sender_close(senders[--i]);
			return -1;
		}
	}
	return 0;
}

/* Which way pkt:bypass() takes: one line at start. */
static void log_bypass(const struct nfq_engine_opts *opts)
{
	uint32_t mark = opts->bypass_mask ? opts->bypass_mark : NFQ_BYPASS_MARK;
	uint32_t mask = opts->bypass_mask ? opts->bypass_mask : NFQ_BYPASS_MARK;
	if (opts->flags & NFQ_FLAG_CONNTRACK)
		nfq_log(NFQ_LOG_INFO, "pkt:bypass() sets mark 0x%x/0x%x on the packet and on its connection "
			"(--conntrack: the connection mark goes with the verdict)", mark, mask);
	else
		nfq_log(NFQ_LOG_INFO, "pkt:bypass() sets mark 0x%x/0x%x on the packet: CONNMARK rules keep it "
			"on the connection (README, Bypass)", mark, mask);
}

static void close_senders(struct nfq_sender **senders, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		nfq_sender_close(senders[i]);
		senders[i] = NULL;
	}
}

int main(int argc, char **argv)
{
	struct cli cli = { 0 };
	char err[1024];

	/* Scripts print per packet: lines must reach a pipe as they are written. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	parse_args(argc, argv, &cli);

	int live = !cli.check && !cli.replay.capture;
	/* The kernel's per-queue counters are root's alone: keep them readable. */
	unsigned n_queues = cli.last_queue - cli.engine.queue_num + 1;
	int kernel_stats_fds[NFQ_MAX_WORKERS];
	for (unsigned i = 0; i < n_queues; i++)
		kernel_stats_fds[i] = cli.user && live ? open(NFQ_KERNEL_STATS_PATH, O_RDONLY | O_CLOEXEC) : -1;
	struct nfq_sender *senders[NFQ_MAX_WORKERS] = { 0 };
	unsigned n_senders = cli.send ? (live ? n_queues : 1) : 0;
	if (open_senders(&cli, live, n_senders, senders) < 0)
		return 1;
	/* Bound as root, so that a privileged port or /run works with --user. */
	if (cli.metrics && live && nfq_metrics_listen(cli.metrics, err, sizeof err) < 0) {
		fprintf(stderr, "nfqlua: %s\n", err);
		goto fail;
	}
	/* From here on, the script is only read as the user it runs as. */
	if (cli.user && drop_privileges(cli.user) < 0)
		goto fail;
	FILE *f = fopen(cli.engine.script, "r");
	if (!f) {
		int saved = errno;
		int user_hint = cli.user && saved == EACCES;
		fprintf(stderr, "nfqlua: cannot read script '%s': %s%s%s%s\n", cli.engine.script, strerror(saved),
			user_hint ? " (--user " : "", user_hint ? cli.user : "",
			user_hint ? " must be able to read it and its directories)" : "");
		goto fail;
	}
	fclose(f);

	cli.engine.log = log_line;
	if (cli.check) {
		if (nfq_engine_check_script(&cli.engine, err, sizeof err) < 0) {
			fprintf(stderr, "nfqlua: %s\n", err);
			return 1;
		}
		printf("%s: ok\n", cli.engine.script);
		return 0;
	}
	if (cli.syslog)
		nfq_log_to_syslog();

	if (cli.replay.capture) {
		cli.replay.engine = cli.engine;
		cli.replay.engine.sender = senders[0];
		return nfq_replay_run(&cli.replay);
	}
	signal(SIGPIPE, SIG_IGN);
	struct ev_loop *loop = EV_DEFAULT;
	ev_signal sigint, sigterm, sighup, sigusr1;
	ev_signal_init(&sigint, on_stop_signal, SIGINT);
	ev_signal_init(&sigterm, on_stop_signal, SIGTERM);
	ev_signal_init(&sighup, on_reload_signal, SIGHUP);
	ev_signal_init(&sigusr1, on_stats_signal, SIGUSR1);
	ev_signal_start(loop, &sigint);
	ev_signal_start(loop, &sigterm);
	ev_signal_start(loop, &sighup);
	ev_signal_start(loop, &sigusr1);
	/* After the watchers: a stop from here on removes the new file too. */
	if (cli.pidfile && prepare_pidfile(cli.pidfile, cli.user) < 0)
		goto fail;

	if (cli.metrics && nfq_metrics_serve(cli.engine.script, cli.engine.queue_num, n_queues, err, sizeof err) < 0) {
		fprintf(stderr, "nfqlua: %s\n", err);
		goto fail;
	}
	int started = nfq_workers_start(loop, &cli.engine, n_queues, kernel_stats_fds,
					cli.send ? senders : NULL);
	if (started == 0 && cli.pidfile && place_pidfile() < 0)
		started = -1;
	if (started == 0) {
		/* Whatever range was asked, the kernel copies at most NFQ_MAX_COPY_RANGE bytes. */
		uint32_t range = cli.engine.range < NFQ_MAX_COPY_RANGE ? cli.engine.range : NFQ_MAX_COPY_RANGE;
		for (unsigned i = 0; i < n_queues; i++)
			nfq_log(NFQ_LOG_INFO, "queue %u bound (mode %s, range %u, max-len %u, fallback %s), running %s",
				cli.engine.queue_num + i, cli.engine.mode == NFQ_COPY_META ? "meta" : "packet",
				range, cli.engine.max_len, cli.engine.fallback == NFQ_ACCEPT ? "accept" : "drop",
				cli.engine.script);
		if (cli.send)
			nfq_log(NFQ_LOG_INFO, "sending is on (--send): sent packets leave with mark 0x%x/0x%x",
				cli.send_mark, cli.send_mask);
		log_bypass(&cli.engine);
		ev_run(loop, 0);
	}

	ev_signal_stop(loop, &sigint);
	ev_signal_stop(loop, &sigterm);
	signal(SIGINT, exit_now);
	signal(SIGTERM, exit_now);
	/* Scrapes read the engines' counters: they end before the engines do. */
	nfq_metrics_stop();
	nfq_workers_stop();
	if (remove_pidfile() < 0)
		nfq_log(NFQ_LOG_WARN, "cannot remove pidfile '%s': %s", pidfile.path, strerror(errno));
	int exit_status = nfq_workers_exit_status();
	if (exit_status >= 0)
		return exit_status;
	if (started < 0)
		return 1;
	nfq_log(NFQ_LOG_INFO, "all queues unbound, exiting");
	return 0;
fail:
	close_senders(senders, n_senders);
	nfq_metrics_stop();
	remove_pidfile();
	return 1;
}

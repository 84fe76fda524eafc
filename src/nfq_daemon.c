/*
 * nfq_daemon.c: the daemon: flags, signals and logging over the engine.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <ev.h>
#include <linux/capability.h>

#include "nfq_log.h"
#include "nfq_replay.h"
#include "nfq_workers.h"
#include "nfq_engine.h"

#define NFQLUA_VERSION nfq_version()

enum { EXIT_USAGE = 2 };

static const char usage[] =
	"usage: nfqlua SCRIPT --queue N [options]\n"
	"       nfqlua --replay CAPTURE SCRIPT [--out KEPT] [--hook HOOK] [--mark M] [options]\n"
	"\n"
	"Filter the packets that an iptables -j NFQUEUE rule sends to queue N\n"
	"with the Lua function that SCRIPT returns.\n"
	"\n"
	"  -q, --queue N|A-B      queue number, 0..65535, or a range of up to 64 queues,\n"
	"                         one worker thread each (required)\n"
	"      --max-len N        kernel queue length in packets (default 1024)\n"
	"      --mode packet|meta copy whole packets or metadata only (default packet)\n"
	"      --range N          bytes copied per packet, 1..65535 (default 65535)\n"
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
	"      --check            load and compile SCRIPT, then exit\n"
	"      --replay CAPTURE   run SCRIPT over a pcap/pcapng file instead of a queue:\n"
	"                         one line per verdict and a summary; needs no root\n"
	"      --out KEPT         with --replay: write the accepted packets to KEPT (pcap)\n"
	"      --hook HOOK        with --replay: prerouting, input (default), forward,\n"
	"                         output or postrouting\n"
	"      --mark M           with --replay: the mark packets arrive with\n"
	"      --user NAME        give up root before binding and loading SCRIPT: run as\n"
	"                         NAME, keeping only CAP_NET_ADMIN (which verdicts need)\n"
	"      --pidfile PATH     write the pid to PATH, removed at exit\n"
	"      --syslog           log to syslog (facility daemon) instead of stderr\n"
	"      --log-level LEVEL  error, warn, info (default) or debug\n"
	"  -v, --verbose          log at debug level, with Lua tracebacks\n"
	"      --version          print the version and exit\n"
	"  -h, --help             print this help and exit\n"
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
	const char *user;	/* --user */
	int syslog;
	struct nfq_replay_opts replay;	/* with --replay */
};

static const char *pidfile;
static FILE *pidfile_stream;	/* opened before giving up root, written once running */

static void usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "nfqlua: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, " (see nfqlua --help)\n");
	exit(EXIT_USAGE);
}

static uint32_t parse_number(const char *flag, const char *s, unsigned long lo,
			     unsigned long hi)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (*s < '0' || *s > '9' || *end || errno || v < lo || v > hi) {
		fprintf(stderr, "nfqlua: %s must be a number from %lu to %lu, got '%s' (see nfqlua --help)\n",
			flag, lo, hi, s);
		exit(EXIT_USAGE);
	}
	return (uint32_t)v;
}

static void parse_args(int argc, char **argv, struct cli *cli)
{
	enum { OPT_MAX_LEN = 256, OPT_MODE, OPT_RANGE, OPT_SOCK_LEN, OPT_FALLBACK,
	       OPT_CHECK, OPT_VERSION, OPT_PIDFILE, OPT_LOG_LEVEL, OPT_FAIL_OPEN,
	       OPT_NO_GSO, OPT_CONNTRACK, OPT_UID_GID, OPT_SECCTX, OPT_REPLAY, OPT_OUT,
	       OPT_HOOK, OPT_MARK, OPT_LUA_MEM_LIMIT, OPT_SCRIPT_TIMEOUT, OPT_USER, OPT_SYSLOG };
	static const char *const hooks[] = { "prerouting", "input", "forward", "output", "postrouting" };
	static const char *const levels[] = { "error", "warn", "info", "debug" };
	static const struct option options[] = {
		{ "queue", required_argument, NULL, 'q' },
		{ "max-len", required_argument, NULL, OPT_MAX_LEN },
		{ "mode", required_argument, NULL, OPT_MODE },
		{ "range", required_argument, NULL, OPT_RANGE },
		{ "sock-len", required_argument, NULL, OPT_SOCK_LEN },
		{ "fallback", required_argument, NULL, OPT_FALLBACK },
		{ "check", no_argument, NULL, OPT_CHECK },
		{ "fail-open", no_argument, NULL, OPT_FAIL_OPEN },
		{ "no-gso", no_argument, NULL, OPT_NO_GSO },
		{ "conntrack", no_argument, NULL, OPT_CONNTRACK },
		{ "uid-gid", no_argument, NULL, OPT_UID_GID },
		{ "secctx", no_argument, NULL, OPT_SECCTX },
		{ "replay", required_argument, NULL, OPT_REPLAY },
		{ "out", required_argument, NULL, OPT_OUT },
		{ "hook", required_argument, NULL, OPT_HOOK },
		{ "mark", required_argument, NULL, OPT_MARK },
		{ "lua-mem-limit", required_argument, NULL, OPT_LUA_MEM_LIMIT },
		{ "script-timeout", required_argument, NULL, OPT_SCRIPT_TIMEOUT },
		{ "pidfile", required_argument, NULL, OPT_PIDFILE },
		{ "user", required_argument, NULL, OPT_USER },
		{ "syslog", no_argument, NULL, OPT_SYSLOG },
		{ "log-level", required_argument, NULL, OPT_LOG_LEVEL },
		{ "verbose", no_argument, NULL, 'v' },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct nfq_engine_opts *o = &cli->engine;
	o->mode = NFQ_COPY_PACKET;
	o->range = 65535;
	o->max_len = 1024;
	o->fallback = NFQ_ACCEPT;
	o->flags = NFQ_FLAG_GSO;
	cli->replay.hook = NFQ_HOOK_INPUT;
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, ":q:vh", options, NULL)) != -1) {
		switch (c) {
		case 'q': {
			char first[16];
			const char *dash = strchr(optarg, '-');
			if (dash && dash != optarg && (size_t)(dash - optarg) < sizeof first) {
				snprintf(first, sizeof first, "%.*s", (int)(dash - optarg), optarg);
				o->queue_num = parse_number("--queue", first, 0, 65535);
				cli->last_queue = parse_number("--queue", dash + 1, 0, 65535);
				if (cli->last_queue < o->queue_num || cli->last_queue - o->queue_num >= NFQ_MAX_WORKERS)
					usage_error("--queue A-B needs A <= B and at most 64 queues, got '%s'", optarg);
			} else {
				o->queue_num = parse_number("--queue", optarg, 0, 65535);
				cli->last_queue = o->queue_num;
			}
			cli->have_queue = 1;
			break;
		}
		case OPT_MAX_LEN:
			o->max_len = parse_number("--max-len", optarg, 1, UINT32_MAX);
			break;
		case OPT_MODE:
			if (strcmp(optarg, "packet") == 0)
				o->mode = NFQ_COPY_PACKET;
			else if (strcmp(optarg, "meta") == 0)
				o->mode = NFQ_COPY_META;
			else
				usage_error("--mode must be 'packet' or 'meta', got '%s'", optarg);
			break;
		case OPT_RANGE:
			o->range = parse_number("--range", optarg, 1, 65535);
			break;
		case OPT_SOCK_LEN:
			o->sock_len = parse_number("--sock-len", optarg, 4096, INT32_MAX);
			break;
		case OPT_FALLBACK:
			if (strcmp(optarg, "accept") == 0)
				o->fallback = NFQ_ACCEPT;
			else if (strcmp(optarg, "drop") == 0)
				o->fallback = NFQ_DROP;
			else
				usage_error("--fallback must be 'accept' or 'drop', got '%s'", optarg);
			break;
		case OPT_CHECK:
			cli->check = 1;
			break;
		case OPT_FAIL_OPEN:
			o->flags |= NFQ_FLAG_FAIL_OPEN;
			break;
		case OPT_NO_GSO:
			o->flags &= ~(uint32_t)NFQ_FLAG_GSO;
			break;
		case OPT_CONNTRACK:
			o->flags |= NFQ_FLAG_CONNTRACK;
			break;
		case OPT_UID_GID:
			o->flags |= NFQ_FLAG_UID_GID;
			break;
		case OPT_SECCTX:
			o->flags |= NFQ_FLAG_SECCTX;
			break;
		case OPT_REPLAY:
			cli->replay.capture = optarg;
			break;
		case OPT_OUT:
			cli->replay.out = optarg;
			break;
		case OPT_HOOK: {
			int found = -1;
			for (int i = 0; i < 5; i++)
				if (strcmp(optarg, hooks[i]) == 0)
					found = i;
			if (found < 0)
				usage_error("--hook must be prerouting, input, forward, output or postrouting, got '%s'", optarg);
			cli->replay.hook = (uint32_t)found;
			break;
		}
		case OPT_SCRIPT_TIMEOUT:
			o->script_timeout_ms = parse_number("--script-timeout", optarg, 1, 3600000);
			break;
		case OPT_LUA_MEM_LIMIT:
			o->lua_mem_limit = parse_number("--lua-mem-limit", optarg, 1 << 20, UINT32_MAX);
			break;
		case OPT_MARK:
			cli->replay.mark = parse_number("--mark", optarg, 0, UINT32_MAX);
			break;
		case OPT_PIDFILE:
			if (!*optarg)
				usage_error("--pidfile needs a path%s", "");
			cli->pidfile = optarg;
			break;
		case OPT_USER:
			if (!*optarg)
				usage_error("--user needs a user name%s", "");
			cli->user = optarg;
			break;
		case OPT_SYSLOG:
			cli->syslog = 1;
			break;
		case OPT_LOG_LEVEL: {
			int found = -1;
			for (int i = 0; i < 4; i++)
				if (strcmp(optarg, levels[i]) == 0)
					found = i;
			if (found < 0)
				usage_error("--log-level must be error, warn, info or debug, got '%s'", optarg);
			nfq_log_level = found;
			break;
		}
		case 'v':
			if (nfq_log_level < NFQ_LOG_DEBUG)
				nfq_log_level++;
			break;
		case OPT_VERSION:
			printf("nfqlua %s\n", NFQLUA_VERSION);
			exit(0);
		case 'h':
			fputs(usage, stdout);
			exit(0);
		case ':':
			usage_error("option '%s' needs a value", argv[optind - 1]);
			break;
		default:
			usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		usage_error("no SCRIPT given%s", "");
	if (optind + 1 < argc)
		usage_error("unexpected argument '%s': give one SCRIPT", argv[optind + 1]);
	o->script = argv[optind];
	if ((cli->replay.out || cli->replay.hook != 1 || cli->replay.mark) && !cli->replay.capture)
		usage_error("--out, --hook and --mark go with --replay%s", "");
	if (!cli->check && !cli->have_queue && !cli->replay.capture)
		usage_error("--queue N is required%s", "");
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

/* A second SIGINT or SIGTERM while draining: leave now. */
static void exit_now(int sig)
{
	static const char msg[] = "nfqlua: error: second signal during the drain, exiting at once\n";
	if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0)
		_exit(128 + sig);
	if (pidfile)
		unlink(pidfile);
	_exit(128 + sig);
}

/* Opened before giving up root, written once every queue runs. */
static int open_pidfile(const char *path)
{
	pidfile_stream = fopen(path, "w");
	if (!pidfile_stream) {
		fprintf(stderr, "nfqlua: cannot write pidfile '%s': %s\n", path, strerror(errno));
		return -1;
	}
	pidfile = path;
	return 0;
}

static int write_pidfile(void)
{
	if (fprintf(pidfile_stream, "%ld\n", (long)getpid()) < 0 || fflush(pidfile_stream) != 0) {
		fprintf(stderr, "nfqlua: cannot write pidfile '%s': %s\n", pidfile, strerror(errno));
		return -1;
	}
	return 0;
}

/* After --user, the directory may not let us unlink: then at least empty it. */
static void remove_pidfile(void)
{
	if (unlink(pidfile) < 0 && ftruncate(fileno(pidfile_stream), 0) < 0)
		nfq_log(NFQ_LOG_WARN, "cannot remove pidfile '%s': %s", pidfile, strerror(errno));
	fclose(pidfile_stream);
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

int main(int argc, char **argv)
{
	struct cli cli = { 0 };
	char err[1024];

	/* Scripts print per packet: lines must reach a pipe as they are written. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	parse_args(argc, argv, &cli);

	int live = !cli.check && !cli.replay.capture;
	if (cli.pidfile && live && open_pidfile(cli.pidfile) < 0)
		return 1;
	/* The kernel's per-queue counters are root's alone: keep them readable. */
	unsigned n_queues = cli.last_queue - cli.engine.queue_num + 1;
	int kernel_stats_fds[NFQ_MAX_WORKERS];
	for (unsigned i = 0; i < n_queues; i++)
		kernel_stats_fds[i] = cli.user && live ? open(NFQ_KERNEL_STATS_PATH, O_RDONLY | O_CLOEXEC) : -1;
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

	int started = nfq_workers_start(loop, &cli.engine, n_queues, kernel_stats_fds);
	if (started == 0 && pidfile && write_pidfile() < 0)
		started = -1;
	if (started == 0) {
		for (unsigned i = 0; i < n_queues; i++)
			nfq_log(NFQ_LOG_INFO, "queue %u bound (mode %s, range %u, max-len %u, fallback %s), running %s",
				cli.engine.queue_num + i, cli.engine.mode == NFQ_COPY_META ? "meta" : "packet",
				cli.engine.range, cli.engine.max_len,
				cli.engine.fallback ? "accept" : "drop", cli.engine.script);
		ev_run(loop, 0);
	}

	ev_signal_stop(loop, &sigint);
	ev_signal_stop(loop, &sigterm);
	signal(SIGINT, exit_now);
	signal(SIGTERM, exit_now);
	nfq_workers_stop();
	if (pidfile)
		remove_pidfile();
	int exit_status = nfq_workers_exit_status();
	if (exit_status >= 0)
		return exit_status;
	if (started < 0)
		return 1;
	nfq_log(NFQ_LOG_INFO, "all queues unbound, exiting");
	return 0;
fail:
	if (pidfile)
		remove_pidfile();
	return 1;
}

/*
 * nfq_metrics_server.c: --metrics ADDR, /metrics over HTTP.
 *
 * libmicrohttpd runs the server in a thread of its own, with bounds on
 * what a client may cost: CONNECTION_LIMIT connections at once, each closed
 * after IDLE_TIMEOUT_S idle seconds, a request's headers within
 * REQUEST_MEMORY bytes (a larger one gets an error status and the
 * connection closes). A scrape reads what the workers published here with
 * relaxed loads and takes no lock a worker takes: it cannot hold up a
 * packet. Each counter a scrape shows is one a worker had at some moment of
 * the scrape, so it never goes down from one scrape to the next; different
 * counters are not read at one instant (received may count a packet whose
 * accepted does not yet).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "nfq_metrics.h"
#include "nfq_metrics_server.h"

#define CONNECTION_LIMIT 16
#define IDLE_TIMEOUT_S 10
#define REQUEST_MEMORY (32 * 1024)
#define LISTEN_BACKLOG 16
/* The kernel's table of queues: one short line each. */
#define KERNEL_STATS_MAX (64 * 1024)

#define CONTENT_TYPE_TEXT "text/plain; version=0.0.4; charset=utf-8"
#define CONTENT_TYPE_OPENMETRICS "application/openmetrics-text; version=1.0.0; charset=utf-8"

/* What one worker published. */
struct slot {
	_Atomic(const struct nfq_stats *) stats;
	atomic_size_t heap;
};

static struct {
	int fd;			/* the listening socket, -1 */
	int kernel_fd;		/* NFQ_KERNEL_STATS_PATH, opened as root, or -1 */
	char unix_path[sizeof ((struct sockaddr_un *)0)->sun_path];	/* unix:PATH, to remove at stop */
	dev_t unix_dev;
	ino_t unix_ino;
	struct MHD_Daemon *mhd;
	const char *script;
	uint32_t first_queue;
	unsigned n_queues;
	double start_time;
} server = { .fd = -1, .kernel_fd = -1 };

static struct slot slots[NFQ_METRIC_MAX_WORKERS];
static atomic_uint script_version = 1;
static _Atomic long long loaded_at_ms;	/* wall clock of the running version's start */

static long long wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct address {
	struct sockaddr_storage sa;
	socklen_t len;
};

static int parse_addr(const char *addr, struct address *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof *out);
	if (strncmp(addr, "unix:", 5) == 0) {
		struct sockaddr_un *un = (struct sockaddr_un *)&out->sa;
		const char *path = addr + 5;
		if (!*path || strlen(path) >= sizeof un->sun_path) {
			snprintf(err, errlen, "--metrics unix:PATH needs a path of 1 to %zu bytes, got '%s'",
				 sizeof un->sun_path - 1, addr);
			return -1;
		}
		un->sun_family = AF_UNIX;
		memcpy(un->sun_path, path, strlen(path) + 1);
		out->len = sizeof *un;
		return 0;
	}
	char host[64];
	const char *colon = strrchr(addr, ':');
	const char *h = addr;
	size_t hlen = colon ? (size_t)(colon - addr) : 0;
	int v6 = addr[0] == '[';
	if (v6) {
		h++;
		hlen = colon && colon > addr && colon[-1] == ']' ? (size_t)(colon - addr) - 2 : 0;
	}
	char *end = NULL;
	unsigned long port = colon ? strtoul(colon + 1, &end, 10) : 0;
	int ok = colon && hlen > 0 && hlen < sizeof host && colon[1] >= '0' && colon[1] <= '9' && !*end &&
		port >= 1 && port <= 65535;
	if (ok) {
		memcpy(host, h, hlen);
		host[hlen] = '\0';
		if (v6) {
			struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out->sa;
			in6->sin6_family = AF_INET6;
			in6->sin6_port = htons((uint16_t)port);
			ok = inet_pton(AF_INET6, host, &in6->sin6_addr) == 1;
			out->len = sizeof *in6;
		} else {
			struct sockaddr_in *in = (struct sockaddr_in *)&out->sa;
			in->sin_family = AF_INET;
			in->sin_port = htons((uint16_t)port);
			ok = inet_pton(AF_INET, host, &in->sin_addr) == 1;
			out->len = sizeof *in;
		}
	}
	if (!ok) {
		snprintf(err, errlen, "--metrics must be IPv4:PORT, [IPv6]:PORT or unix:PATH (as 127.0.0.1:9640), got '%s'",
			 addr);
		return -1;
	}
	return 0;
}

int nfq_metrics_check_addr(const char *addr, char *err, size_t errlen)
{
	struct address a;
	return parse_addr(addr, &a, err, errlen);
}

/* A unix socket nobody accepts on any more (a daemon that was killed): 1.
 * Anything but a socket at that path is never taken for one. */
static int stale_unix_socket(const struct address *a)
{
	struct stat st;
	if (lstat(((const struct sockaddr_un *)&a->sa)->sun_path, &st) < 0 || !S_ISSOCK(st.st_mode))
		return 0;
	int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (probe < 0)
		return 0;
	int refused = connect(probe, (const struct sockaddr *)&a->sa, a->len) < 0 && errno == ECONNREFUSED;
	close(probe);
	return refused;
}

int nfq_metrics_listen(const char *addr, char *err, size_t errlen)
{
	struct address a;
	if (parse_addr(addr, &a, err, errlen) < 0)
		return -1;
	int family = a.sa.ss_family;
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "--metrics %s: cannot open a socket: %s", addr, strerror(errno));
		return -1;
	}
	int one = 1;
	if (family != AF_UNIX)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	/* [::]:PORT means IPv6 only: bind only where told. */
	if (family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
	int rc = bind(fd, (const struct sockaddr *)&a.sa, a.len);
	if (rc < 0 && errno == EADDRINUSE && family == AF_UNIX && stale_unix_socket(&a)) {
		unlink(((struct sockaddr_un *)&a.sa)->sun_path);
		rc = bind(fd, (const struct sockaddr *)&a.sa, a.len);
	}
	if (rc < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
		int saved = errno;
		const char *fix = saved == EADDRINUSE ? "; stop what listens there, or give --metrics another address"
			: saved == EADDRNOTAVAIL ? "; no interface has that address: give one this host has"
			: saved == EACCES ? "; give --metrics a place this user may bind" : "";
		snprintf(err, errlen, "--metrics %s: cannot listen: %s%s", addr, strerror(saved), fix);
		close(fd);
		return -1;
	}
	if (family == AF_UNIX) {
		const char *path = ((struct sockaddr_un *)&a.sa)->sun_path;
		struct stat st;
		/* Scrapers run as their own users: the directory's permissions decide who reaches it. */
		chmod(path, 0666);
		if (stat(path, &st) == 0) {
			snprintf(server.unix_path, sizeof server.unix_path, "%s", path);
			server.unix_dev = st.st_dev;
			server.unix_ino = st.st_ino;
		}
	}
	server.fd = fd;
	server.kernel_fd = open(NFQ_KERNEL_STATS_PATH, O_RDONLY | O_CLOEXEC);
	return 0;
}

int nfq_metrics_enabled(void)
{
	return server.fd >= 0;
}

void nfq_metrics_worker_serving(unsigned index, const struct nfq_stats *stats)
{
	if (index < NFQ_METRIC_MAX_WORKERS)
		atomic_store_explicit(&slots[index].stats, stats, memory_order_release);
}

void nfq_metrics_worker_heap(unsigned index, size_t bytes)
{
	if (index < NFQ_METRIC_MAX_WORKERS)
		atomic_store_explicit(&slots[index].heap, bytes, memory_order_relaxed);
}

void nfq_metrics_script_reloaded(unsigned version)
{
	atomic_store_explicit(&script_version, version, memory_order_relaxed);
	atomic_store_explicit(&loaded_at_ms, wall_ms(), memory_order_relaxed);
}

/* struct nfq_stats, field by field. */
static const struct {
	const char *name;	/* a counter, without _total */
	const char *help;
	size_t offset;
} queue_counters[] = {
#define COUNTER(name, field, help) { name, help, offsetof(struct nfq_stats, field) }
	COUNTER("nfqlua_packets_received", received, "Packets the queue received from the kernel."),
	COUNTER("nfqlua_packets_accepted", accepted, "Packets given an accept verdict."),
	COUNTER("nfqlua_packets_dropped", dropped, "Packets given a drop verdict."),
	COUNTER("nfqlua_packets_repeated", repeated, "Packets given a repeat verdict."),
	COUNTER("nfqlua_packets_requeued", requeued, "Packets sent to another queue."),
	COUNTER("nfqlua_fallback_verdicts", fallback, "Verdicts given for the script (--fallback): errors, forgotten packets, stops."),
	COUNTER("nfqlua_verdict_errors", verdict_errors, "Verdicts the kernel refused."),
	COUNTER("nfqlua_receive_overruns", enobufs, "Receive buffer overruns the kernel reported (ENOBUFS)."),
	COUNTER("nfqlua_script_errors", script_errors, "Errors raised by the script."),
	COUNTER("nfqlua_script_timeouts", script_timeouts, "Calls into the script cut short by --script-timeout."),
	COUNTER("nfqlua_packets_sent", sent, "Packets nfq.send and pkt:reject gave the kernel."),
	COUNTER("nfqlua_send_errors", send_errors, "Packets the kernel refused to send."),
	COUNTER("nfqlua_reloads", reloads, "Script versions swapped in by a reload (SIGHUP)."),
	COUNTER("nfqlua_reload_failures", reload_failures, "Reloads refused, the running version kept."),
#undef COUNTER
};

/* The kernel's line for each of our queues, -1 where there is none. */
struct kernel_queue {
	long long waiting, queue_dropped, user_dropped;
};

static void read_kernel_stats(struct kernel_queue *k)
{
	for (unsigned i = 0; i < server.n_queues; i++)
		k[i].waiting = -1;
	static char buf[KERNEL_STATS_MAX];	/* the scrape thread's alone */
	ssize_t n = server.kernel_fd >= 0 ? pread(server.kernel_fd, buf, sizeof buf - 1, 0) : -1;
	if (n <= 0)
		return;
	buf[n] = '\0';
	/* queue portid waiting copy_mode copy_range queue_dropped user_dropped id_sequence 1 */
	for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
		unsigned num;
		long long waiting, qdrop, udrop;
		if (sscanf(line, "%u %*d %lld %*d %*d %lld %lld", &num, &waiting, &qdrop, &udrop) != 4)
			continue;
		if (num >= server.first_queue && num - server.first_queue < server.n_queues)
			k[num - server.first_queue] = (struct kernel_queue){ waiting, qdrop, udrop };
	}
}

static void queue_sample(struct nfq_metrics_text *t, const char *name, unsigned i, double v)
{
	nfq_metrics_printf(t, "%s{queue=\"%u\"} ", name, server.first_queue + i);
	nfq_metrics_value(t, v);
	nfq_metrics_printf(t, "\n");
}

static const struct nfq_stats *stats_of(unsigned i)
{
	return atomic_load_explicit(&slots[i].stats, memory_order_acquire);
}

static void write_queues(struct nfq_metrics_text *t, int format)
{
	char name[96];
	for (size_t m = 0; m < sizeof queue_counters / sizeof *queue_counters; m++) {
		nfq_metrics_header(t, format, queue_counters[m].name, NFQ_METRIC_COUNTER, queue_counters[m].help);
		snprintf(name, sizeof name, "%s_total", queue_counters[m].name);
		for (unsigned i = 0; i < server.n_queues; i++) {
			const struct nfq_stats *s = stats_of(i);
			if (s)
				queue_sample(t, name, i, (double)__atomic_load_n(
					(const uint64_t *)(const void *)((const char *)s + queue_counters[m].offset),
					__ATOMIC_RELAXED));
		}
	}
	struct kernel_queue k[NFQ_METRIC_MAX_WORKERS];
	read_kernel_stats(k);
	nfq_metrics_header(t, format, "nfqlua_kernel_queued_packets", NFQ_METRIC_GAUGE,
			   "Packets waiting in the kernel's queue for a verdict.");
	for (unsigned i = 0; i < server.n_queues; i++)
		if (k[i].waiting >= 0)
			queue_sample(t, "nfqlua_kernel_queued_packets", i, (double)k[i].waiting);
	nfq_metrics_header(t, format, "nfqlua_kernel_queue_full_drops", NFQ_METRIC_COUNTER,
			   "Packets the kernel dropped because the queue was full (--max-len).");
	for (unsigned i = 0; i < server.n_queues; i++)
		if (k[i].waiting >= 0)
			queue_sample(t, "nfqlua_kernel_queue_full_drops_total", i, (double)k[i].queue_dropped);
	nfq_metrics_header(t, format, "nfqlua_kernel_socket_full_drops", NFQ_METRIC_COUNTER,
			   "Packets the kernel dropped because the daemon's socket was full (--sock-len).");
	for (unsigned i = 0; i < server.n_queues; i++)
		if (k[i].waiting >= 0)
			queue_sample(t, "nfqlua_kernel_socket_full_drops_total", i, (double)k[i].user_dropped);
	nfq_metrics_header(t, format, "nfqlua_lua_heap_bytes", NFQ_METRIC_GAUGE,
			   "Memory the worker's Lua state uses, as of the last second.");
	for (unsigned i = 0; i < server.n_queues; i++)
		if (stats_of(i))
			queue_sample(t, "nfqlua_lua_heap_bytes", i,
				     (double)atomic_load_explicit(&slots[i].heap, memory_order_relaxed));
}

static void write_daemon(struct nfq_metrics_text *t, int format)
{
	nfq_metrics_header(t, format, "nfqlua_script_info", NFQ_METRIC_GAUGE, "The script the daemon runs, as a label.");
	nfq_metrics_printf(t, "nfqlua_script_info{path=");
	nfq_metrics_label_value(t, server.script);
	nfq_metrics_printf(t, "} 1\n");
	nfq_metrics_header(t, format, "nfqlua_script_version", NFQ_METRIC_GAUGE,
			   "The script version running: 1 at start, one more per reload.");
	nfq_metrics_printf(t, "nfqlua_script_version %u\n", atomic_load_explicit(&script_version, memory_order_relaxed));
	nfq_metrics_header(t, format, "nfqlua_script_loaded_timestamp_seconds", NFQ_METRIC_GAUGE,
			   "When the running script version started (Unix time).");
	nfq_metrics_printf(t, "nfqlua_script_loaded_timestamp_seconds ");
	nfq_metrics_value(t, (double)atomic_load_explicit(&loaded_at_ms, memory_order_relaxed) / 1000);
	nfq_metrics_printf(t, "\n");
	nfq_metrics_header(t, format, "nfqlua_start_time_seconds", NFQ_METRIC_GAUGE,
			   "When the daemon started (Unix time).");
	nfq_metrics_printf(t, "nfqlua_start_time_seconds ");
	nfq_metrics_value(t, server.start_time);
	nfq_metrics_printf(t, "\n");
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, char *body, size_t len,
			     const char *content_type)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
	enum MHD_Result rc = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return rc;
}

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned status, const char *text)
{
	char *body = strdup(text);
	return body ? reply(c, status, body, strlen(body), "text/plain; charset=utf-8") : MHD_NO;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
				  const char *version, const char *upload_data, size_t *upload_data_size,
				  void **con_cls)
{
	(void)cls;
	(void)version;
	(void)upload_data;
	/* The first call comes with the headers: answering only once the whole
	 * request is in (an empty call) lets the connection be kept alive. */
	static int headers_seen;
	if (!*con_cls) {
		*con_cls = &headers_seen;
		return MHD_YES;
	}
	if (*upload_data_size) {
		*upload_data_size = 0;	/* a body is ignored */
		return MHD_YES;
	}
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return reply_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
	if (strcmp(url, "/metrics") != 0)
		return reply_text(c, MHD_HTTP_NOT_FOUND, "the metrics are at /metrics\n");
	const char *accept = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
	int format = accept && strstr(accept, "application/openmetrics-text") ? NFQ_METRICS_OPENMETRICS
		: NFQ_METRICS_TEXT;
	struct nfq_metrics_text t = { 0 };
	write_queues(&t, format);
	write_daemon(&t, format);
	nfq_metrics_write_registry(&t, format);
	size_t len;
	char *body = nfq_metrics_finish(&t, format, &len);
	if (!body)
		return reply_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory\n");
	return reply(c, MHD_HTTP_OK, body, len,
		     format == NFQ_METRICS_OPENMETRICS ? CONTENT_TYPE_OPENMETRICS : CONTENT_TYPE_TEXT);
}

int nfq_metrics_serve(const char *script, uint32_t first_queue, unsigned n_queues, char *err, size_t errlen)
{
	server.script = script;
	server.first_queue = first_queue;
	server.n_queues = n_queues;
	server.start_time = (double)wall_ms() / 1000;
	atomic_store(&loaded_at_ms, wall_ms());
	/* Signals stay with the main thread: the server's thread inherits this mask. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	server.mhd = MHD_start_daemon(MHD_USE_AUTO_INTERNAL_THREAD, 0, NULL, NULL, on_request, NULL,
				      MHD_OPTION_LISTEN_SOCKET, server.fd,
				      MHD_OPTION_CONNECTION_LIMIT, (unsigned)CONNECTION_LIMIT,
				      MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S,
				      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)REQUEST_MEMORY,
				      MHD_OPTION_END);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!server.mhd) {
		snprintf(err, errlen, "--metrics: cannot start the HTTP server (libmicrohttpd)");
		return -1;
	}
	return 0;
}

void nfq_metrics_stop(void)
{
	if (server.mhd)
		MHD_stop_daemon(server.mhd);	/* closes the listening socket */
	else if (server.fd >= 0)
		close(server.fd);
	server.mhd = NULL;
	server.fd = -1;
	struct stat st;
	if (server.unix_path[0] && stat(server.unix_path, &st) == 0 && st.st_dev == server.unix_dev &&
	    st.st_ino == server.unix_ino)
		unlink(server.unix_path);
	server.unix_path[0] = '\0';
	if (server.kernel_fd >= 0)
		close(server.kernel_fd);
	server.kernel_fd = -1;
}

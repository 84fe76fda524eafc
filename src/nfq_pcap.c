/*
 * nfq_pcap.c: nfq.pcap's recorders.
 *
 * A recorder has two buffers. The caller (a packet callback) copies each
 * packet, with its pcap record header, into the active one under a mutex
 * that nobody holds for long: when it is full, the buffers swap and the
 * recorder's writer thread is woken to write the full one, while packets go
 * on into the other. When both are full (the disk is slower than the
 * traffic, or stuck) a packet is counted as dropped instead of waiting. The
 * thread also writes what is buffered every flush_ms, on nfq_pcap_flush()
 * and at the last release, so a quiet recorder's packets still reach the
 * disk. write(2), rename(2) and open(2) run on that thread alone.
 *
 * Files are pcap with nanosecond time stamps (magic 0xa1b23c4d) and link
 * type LINKTYPE_RAW (101): each record is an IPv4 or IPv6 packet, as the
 * queue gives them. Rotation numbers files as logrotate does: path is the
 * one being written, path.1 the newest full one, up to path.keep. A failed
 * write (a full disk) is cut back to the last whole record, so every file
 * stays readable; the packets of that buffer are counted as dropped, logged
 * once, and the next buffer tries again.
 *
 * A process has one recorder per path: opening a path again (another
 * worker's Lua state, the next version of a script after a reload) shares
 * it, so the file goes on across reloads and workers share one file.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "nfq_engine.h"	/* NFQ_LOG_* */
#include "nfq_pcap.h"

/*
 * The daemon's log (it follows --syslog) when this file is linked into
 * nfqlua; in nfq/core.so and libnfqlua it is absent and lines go to stderr.
 */
void nfq_log(int level, const char *fmt, ...) __attribute__((weak, format(printf, 2, 3)));

enum {
	PCAP_MAGIC_NS = 0xa1b23c4d,
	LINKTYPE_RAW = 101,
	FILE_HEADER_BYTES = 24,
	RECORD_HEADER_BYTES = 16,
	/* At exit, how long the process waits for writer threads to finish. */
	EXIT_WAIT_MS = 10000
};

struct buffer {
	uint8_t *data;
	size_t fill;
	uint64_t count;		/* records in data */
};

struct nfq_pcap {
	char *path;
	pthread_mutex_t lock;
	pthread_cond_t wake;		/* to the thread: a buffer handed over, a flush, the close */
	pthread_cond_t written;		/* from the thread: a buffer written */
	struct buffer buf[2];
	size_t size;			/* of each buffer */
	int active;			/* the buffer packets go into */
	int handed;			/* the other one holds packets for the thread */
	int flush_asked;
	int closing;			/* the last release: write what is left and end */
	unsigned refs;
	struct nfq_pcap_opts o;
	uint64_t taken, settled;	/* packets buffered; of those, written or lost since */
	uint64_t overflows;		/* drops because both buffers were full */
	struct nfq_pcap_stats st;
	struct nfq_pcap *next;		/* the process's open recorders */
	/* The thread's alone once it runs: */
	int fd;				/* -1: open one before writing */
	uint64_t file_bytes;		/* in the current file; 0: it needs its header */
	int failing;			/* a failure was logged; the next success will be */
	uint64_t overflows_logged;
};

/* What writing one buffer did, added to the stats under the lock. */
struct outcome {
	uint64_t written, dropped, bytes, rotated, errors;
	int err;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t threads_gone = PTHREAD_COND_INITIALIZER;
static struct nfq_pcap *open_recorders;
static unsigned live_threads;
static pthread_once_t exit_hook_once = PTHREAD_ONCE_INIT;

static void say(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(int level, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (nfq_log)
		nfq_log(level, "%s", line);
	else
		fprintf(stderr, "nfqlua: %s: %s\n", level == NFQ_LOG_WARN ? "warning" : "info", line);
}

static void deadline_in(struct timespec *ts, uint32_t ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

/* All of len bytes, unless write(2) fails: the bytes written, errno set if short. */
static size_t write_all(int fd, const uint8_t *p, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = write(fd, p + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = EIO;
			break;
		}
		done += (size_t)n;
	}
	return done;
}

static uint32_t record_bytes(const uint8_t *rec)
{
	uint32_t incl;
	memcpy(&incl, rec + 8, sizeof incl);
	return RECORD_HEADER_BYTES + incl;
}

/* path.1 .. path.(keep-1) become path.2 .. path.keep, path becomes path.1. */
static int shift_names(const char *path, uint32_t keep)
{
	char from[PATH_MAX], to[PATH_MAX];
	int rc = 0;
	if (keep == 0)
		return 0;
	for (uint32_t i = keep - 1; i >= 1; i--) {
		snprintf(from, sizeof from, "%s.%u", path, i);
		snprintf(to, sizeof to, "%s.%u", path, i + 1);
		if (rename(from, to) < 0 && errno != ENOENT)
			rc = -1;
	}
	snprintf(to, sizeof to, "%s.1", path);
	if (rename(path, to) < 0 && errno != ENOENT)
		rc = -1;
	return rc;
}

static int open_file(const char *path)
{
	return open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
}

/* The file header; on failure the file is left empty, to be retried. */
static int write_header(struct nfq_pcap *w, uint32_t snaplen, struct outcome *r)
{
	uint32_t h[6] = { PCAP_MAGIC_NS, 2 | 4u << 16, 0, 0, snaplen, LINKTYPE_RAW };
	if (write_all(w->fd, (const uint8_t *)h, sizeof h) < sizeof h) {
		r->err = errno;
		r->errors++;
		if (ftruncate(w->fd, 0) < 0) {
			close(w->fd);
			w->fd = -1;
		}
		return -1;
	}
	w->file_bytes = FILE_HEADER_BYTES;
	r->bytes += FILE_HEADER_BYTES;
	return 0;
}

/* A current file with its header, opened or created as needed. */
static int ready_file(struct nfq_pcap *w, const struct nfq_pcap_opts *o, struct outcome *r)
{
	if (w->fd < 0) {
		w->fd = open_file(w->path);
		if (w->fd < 0) {
			r->err = errno;
			r->errors++;
			return -1;
		}
		w->file_bytes = 0;
	}
	return w->file_bytes ? 0 : write_header(w, o->snaplen, r);
}

static void rotate(struct nfq_pcap *w, const struct nfq_pcap_opts *o, struct outcome *r)
{
	close(w->fd);
	w->fd = -1;
	w->file_bytes = 0;
	if (shift_names(w->path, o->keep) < 0) {
		r->err = errno;
		r->errors++;
	}
	r->rotated++;
}

/*
 * Write one buffer's records, rotating between records where a file would
 * grow past max_bytes (a record larger than that gets a file of its own).
 * A short write keeps the whole records that made it, cuts the file back to
 * them, and counts the rest of the buffer as dropped.
 */
static void write_buffer(struct nfq_pcap *w, const struct buffer *b, const struct nfq_pcap_opts *o,
			 struct outcome *r)
{
	size_t off = 0;
	uint64_t left = b->count;
	while (off < b->fill && ready_file(w, o, r) == 0) {
		size_t end = off;
		uint64_t n = 0;
		while (end < b->fill) {
			size_t rec = record_bytes(b->data + end);
			if (o->max_bytes && w->file_bytes + (end - off) + rec > o->max_bytes &&
			    (w->file_bytes > FILE_HEADER_BYTES || end > off))
				break;
			end += rec;
			n++;
		}
		size_t done = write_all(w->fd, b->data + off, end - off);
		if (done < end - off) {
			int err = errno;
			size_t kept = 0;
			uint64_t whole = 0;
			while (kept < done) {
				size_t rec = record_bytes(b->data + off + kept);
				if (kept + rec > done)
					break;
				kept += rec;
				whole++;
			}
			r->written += whole;
			r->bytes += kept;
			left -= whole;
			r->err = err;
			r->errors++;
			w->file_bytes += kept;
			if (ftruncate(w->fd, (off_t)w->file_bytes) < 0)
				rotate(w, o, r);	/* keep the damaged file aside, start a new one */
			break;
		}
		r->written += n;
		r->bytes += done;
		w->file_bytes += done;
		left -= n;
		off = end;
		if (off < b->fill)
			rotate(w, o, r);
	}
	r->dropped += left;
}

/* One line when writing starts failing, one when it works again. */
static void report(struct nfq_pcap *w, const struct outcome *r, uint64_t overflows)
{
	if (r->errors && !w->failing) {
		w->failing = 1;
		say(NFQ_LOG_WARN, "pcap %s: cannot write: %s; packets are dropped and counted (w:stats()) "
		    "until writing works again, retried with every buffer", w->path, strerror(r->err));
	} else if (!r->errors && r->written && w->failing) {
		w->failing = 0;
		say(NFQ_LOG_INFO, "pcap %s: writing works again", w->path);
	}
	if (overflows && !w->overflows_logged) {
		w->overflows_logged = overflows;
		say(NFQ_LOG_WARN, "pcap %s: both buffers were full (the disk is slower than the traffic): "
		    "packets are dropped and counted (w:stats()); a larger buffer_bytes absorbs longer bursts", w->path);
	}
}

static void finish(struct nfq_pcap *w)
{
	if (w->fd >= 0)
		close(w->fd);
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->wake);
	pthread_cond_destroy(&w->written);
	free(w->buf[0].data);
	free(w->buf[1].data);
	free(w->path);
	free(w);
}

/*
 * The writer thread: writes a buffer handed over by a full one at once, and
 * takes the active one itself every flush_ms, on a flush and at the close.
 */
static void *writer_main(void *arg)
{
	struct nfq_pcap *w = arg;
	struct timespec next_flush;
	int due = 0;
	pthread_mutex_lock(&w->lock);
	deadline_in(&next_flush, w->o.flush_ms);
	for (;;) {
		if (!w->handed && (due || w->flush_asked || w->closing)) {
			if (w->buf[w->active].count) {
				w->active ^= 1;
				w->handed = 1;
			}
			w->flush_asked = due = 0;
		}
		if (w->handed) {
			struct buffer *b = &w->buf[w->active ^ 1];
			struct nfq_pcap_opts o = w->o;
			struct outcome r = { 0 };
			pthread_mutex_unlock(&w->lock);
			write_buffer(w, b, &o, &r);
			pthread_mutex_lock(&w->lock);
			w->st.written += r.written;
			w->st.dropped += r.dropped;
			w->st.bytes += r.bytes;
			w->st.rotated += r.rotated;
			w->st.write_errors += r.errors;
			if (r.errors)
				w->st.last_errno = r.err;
			else if (r.written)
				w->st.last_errno = 0;
			w->settled += b->count;
			b->fill = 0;
			b->count = 0;
			w->handed = 0;
			uint64_t overflows = w->overflows;
			pthread_cond_broadcast(&w->written);
			pthread_mutex_unlock(&w->lock);
			report(w, &r, overflows);
			pthread_mutex_lock(&w->lock);
			continue;
		}
		if (w->closing)
			break;
		if (pthread_cond_timedwait(&w->wake, &w->lock, &next_flush) == ETIMEDOUT) {
			due = 1;
			deadline_in(&next_flush, w->o.flush_ms);
		}
	}
	pthread_mutex_unlock(&w->lock);
	finish(w);
	pthread_mutex_lock(&registry_lock);
	live_threads--;
	pthread_cond_broadcast(&threads_gone);
	pthread_mutex_unlock(&registry_lock);
	return NULL;
}

/*
 * At exit: recorders still open (a script that never closed its own, a
 * process that called exit() without closing its Lua state) are closed, and
 * the process waits, up to EXIT_WAIT_MS, for their threads to write what
 * they hold.
 */
static void close_all_at_exit(void)
{
	struct timespec until;
	deadline_in(&until, EXIT_WAIT_MS);
	pthread_mutex_lock(&registry_lock);
	for (struct nfq_pcap *w = open_recorders; w; w = w->next) {
		pthread_mutex_lock(&w->lock);
		w->closing = 1;
		pthread_cond_signal(&w->wake);
		pthread_mutex_unlock(&w->lock);
	}
	open_recorders = NULL;
	while (live_threads && pthread_cond_timedwait(&threads_gone, &registry_lock, &until) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&registry_lock);
}

static void hook_exit(void)
{
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_destroy(&threads_gone);
	pthread_cond_init(&threads_gone, &ca);
	pthread_condattr_destroy(&ca);
	atexit(close_all_at_exit);
}

static int check_opts(const struct nfq_pcap_opts *o, char *err, size_t errlen)
{
	if (o->snaplen < 1 || o->snaplen > NFQ_PCAP_MAX_SNAPLEN)
		snprintf(err, errlen, "snaplen must be from 1 to %d, got %u", NFQ_PCAP_MAX_SNAPLEN, o->snaplen);
	else if (o->buffer_bytes < NFQ_PCAP_MIN_BUFFER)
		snprintf(err, errlen, "buffer_bytes must be at least %d, got %u", NFQ_PCAP_MIN_BUFFER, o->buffer_bytes);
	else if (o->flush_ms < 1)
		snprintf(err, errlen, "flush interval must be at least 1 ms");
	else
		return 0;
	errno = EINVAL;
	return -1;
}

/* A new recorder: its file created (with its header, if the disk takes it) and its thread started. */
static struct nfq_pcap *create(const char *path, const struct nfq_pcap_opts *o, char *err, size_t errlen)
{
	struct nfq_pcap *w = calloc(1, sizeof *w);
	if (w) {
		w->path = strdup(path);
		w->buf[0].data = malloc(o->buffer_bytes);
		w->buf[1].data = malloc(o->buffer_bytes);
	}
	if (!w || !w->path || !w->buf[0].data || !w->buf[1].data) {
		snprintf(err, errlen, "out of memory for two buffers of %u bytes", o->buffer_bytes);
		goto fail;
	}
	w->size = o->buffer_bytes;
	w->o = *o;
	w->refs = 1;
	struct stat sb;
	if (o->keep && stat(path, &sb) == 0 && sb.st_size > FILE_HEADER_BYTES && shift_names(path, o->keep) < 0) {
		snprintf(err, errlen, "cannot rotate the existing '%s' away: %s", path, strerror(errno));
		goto fail;
	}
	w->fd = open_file(path);
	if (w->fd < 0) {
		snprintf(err, errlen, "cannot create '%s': %s", path, strerror(errno));
		goto fail;
	}
	struct outcome r = { 0 };
	write_header(w, o->snaplen, &r);	/* a full disk: the thread retries */
	w->st.bytes = r.bytes;
	w->st.write_errors = r.errors;
	w->st.last_errno = r.err;

	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->wake, &ca);
	pthread_cond_init(&w->written, &ca);
	pthread_condattr_destroy(&ca);
	/* Signals stay with the threads that handle them. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_t ta;
	pthread_attr_init(&ta);
	pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
	pthread_t thread;
	int rc = pthread_create(&thread, &ta, writer_main, w);
	pthread_attr_destroy(&ta);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc) {
		snprintf(err, errlen, "cannot start the writer thread: %s", strerror(rc));
		pthread_mutex_destroy(&w->lock);
		pthread_cond_destroy(&w->wake);
		pthread_cond_destroy(&w->written);
		goto fail;
	}
	live_threads++;
	return w;
fail:
	if (w) {
		if (w->fd > 0)
			close(w->fd);
		free(w->buf[0].data);
		free(w->buf[1].data);
		free(w->path);
		free(w);
	}
	return NULL;
}

struct nfq_pcap *nfq_pcap_open(const char *path, const struct nfq_pcap_opts *o, char *err, size_t errlen)
{
	if (check_opts(o, err, errlen) < 0)
		return NULL;
	pthread_once(&exit_hook_once, hook_exit);
	pthread_mutex_lock(&registry_lock);
	struct nfq_pcap *w;
	for (w = open_recorders; w; w = w->next) {
		if (strcmp(w->path, path) == 0) {
			pthread_mutex_lock(&w->lock);
			w->refs++;
			w->o.max_bytes = o->max_bytes;
			w->o.keep = o->keep;
			w->o.snaplen = o->snaplen;
			w->o.flush_ms = o->flush_ms;
			pthread_mutex_unlock(&w->lock);
			break;
		}
	}
	if (!w) {
		w = create(path, o, err, errlen);
		if (w) {
			w->next = open_recorders;
			open_recorders = w;
		}
	}
	pthread_mutex_unlock(&registry_lock);
	return w;
}

int nfq_pcap_write(struct nfq_pcap *w, const uint8_t *data, uint32_t len, uint32_t orig_len, int64_t sec,
		   int64_t nsec)
{
	if (sec < 0) {
		struct timespec now;
		clock_gettime(CLOCK_REALTIME, &now);
		sec = now.tv_sec;
		nsec = now.tv_nsec;
	}
	pthread_mutex_lock(&w->lock);
	uint32_t incl = len < w->o.snaplen ? len : w->o.snaplen;
	size_t need = RECORD_HEADER_BYTES + (size_t)incl;
	struct buffer *b = &w->buf[w->active];
	if (b->fill + need > w->size) {
		if (w->handed) {
			w->st.dropped++;
			w->overflows++;
			pthread_mutex_unlock(&w->lock);
			return 0;
		}
		w->active ^= 1;
		w->handed = 1;
		pthread_cond_signal(&w->wake);
		b = &w->buf[w->active];
	}
	uint32_t h[4] = { (uint32_t)sec, (uint32_t)nsec, incl, orig_len > len ? orig_len : len };
	memcpy(b->data + b->fill, h, sizeof h);
	memcpy(b->data + b->fill + sizeof h, data, incl);
	b->fill += need;
	b->count++;
	w->taken++;
	pthread_mutex_unlock(&w->lock);
	return 1;
}

int nfq_pcap_write_packet(struct nfq_pcap *w, const struct nfq_packet *p)
{
	static const uint8_t empty[1];
	const uint8_t *data = p->payload;
	uint32_t len = p->payload_len, orig_len = p->cap_len;
	if (p->flags & NFQ_PF_PAYLOAD_SET) {
		data = p->new_payload ? p->new_payload : empty;
		len = orig_len = p->new_payload_len;
	}
	if (!data)
		return -1;
	if (p->flags & NFQ_PF_TIMESTAMP)
		return nfq_pcap_write(w, data, len, orig_len, p->ts_sec, p->ts_usec * 1000);
	return nfq_pcap_write(w, data, len, orig_len, -1, 0);
}

void nfq_pcap_flush(struct nfq_pcap *w)
{
	pthread_mutex_lock(&w->lock);
	w->flush_asked = 1;
	pthread_cond_signal(&w->wake);
	pthread_mutex_unlock(&w->lock);
}

int nfq_pcap_sync(struct nfq_pcap *w, uint32_t timeout_ms)
{
	struct timespec until;
	deadline_in(&until, timeout_ms);
	int rc = 0;
	pthread_mutex_lock(&w->lock);
	uint64_t target = w->taken;
	w->flush_asked = 1;
	pthread_cond_signal(&w->wake);
	while (w->settled < target && rc == 0) {
		if (pthread_cond_timedwait(&w->written, &w->lock, &until) == ETIMEDOUT)
			rc = -1;
	}
	rc = w->settled < target ? -1 : 0;
	pthread_mutex_unlock(&w->lock);
	if (rc)
		errno = ETIMEDOUT;
	return rc;
}

void nfq_pcap_get_stats(struct nfq_pcap *w, struct nfq_pcap_stats *out)
{
	pthread_mutex_lock(&w->lock);
	*out = w->st;
	out->buffered = w->taken - w->settled;
	pthread_mutex_unlock(&w->lock);
}

void nfq_pcap_release(struct nfq_pcap *w)
{
	pthread_mutex_lock(&registry_lock);
	pthread_mutex_lock(&w->lock);
	if (--w->refs == 0) {
		struct nfq_pcap **link = &open_recorders;
		while (*link && *link != w)
			link = &(*link)->next;
		if (*link)
			*link = w->next;
		w->closing = 1;
	} else {
		w->flush_asked = 1;
	}
	pthread_cond_signal(&w->wake);
	pthread_mutex_unlock(&w->lock);
	pthread_mutex_unlock(&registry_lock);
}

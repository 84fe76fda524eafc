/*
 * nfq_workers.c: the daemon's workers. Each queue gets a thread with its
 * own libev loop, engine and Lua state; the main thread takes the signals
 * and drives the workers with ev_async, and they report back the same way.
 * What a worker reports lives in struct worker, under `lock`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "nfq_log.h"
#include "nfq_metrics.h"
#include "nfq_metrics_server.h"
#include "nfq_workers.h"

/* How long a stopping worker may take before its script is interrupted. */
#define STOP_GRACE_MS 2000
/* With --metrics: how often a worker publishes its Lua heap. */
#define HEAP_PUBLISH_S 1.0

/* A worker's part in a reload: see begin_reload(). */
enum reload_step { RELOAD_IDLE, RELOAD_PREPARING, RELOAD_PREPARED, RELOAD_FAILED, RELOAD_DECIDING, RELOAD_DONE };

struct worker {
	pthread_t thread;
	int has_thread;
	struct ev_loop *loop;
	struct nfq_engine_opts opts;
	ev_async reload, decide, stats, stop;
	ev_timer heap;		/* with --metrics */
	int kernel_stats_fd;	/* opened before --user gave up root, or -1 */
	/* Under lock: */
	struct nfq_engine *engine;	/* once created; freed by the main thread after the join */
	int started;		/* 0 starting, 1 serving, -1 failed */
	enum reload_step reload_step;
	int commit;		/* the main thread's decision for the prepared version */
	int handed;		/* held packets handed to the new version */
	char err[1024];		/* why the start or the reload failed */
};

static struct worker workers[NFQ_MAX_WORKERS];
static unsigned n_workers;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int stopping;		/* under lock */

/* Main thread only: */
static struct ev_loop *main_loop;
static ev_async main_wake;	/* a worker reported something */
static ev_async exit_wake;	/* a script called os.exit() */
static int starting;
static int reloading;
static int reload_again;	/* a SIGHUP came during a start or a reload */
static unsigned version = 1;
static atomic_int exit_status = -1;
static char tag[32];		/* "queue N" or "queues A-B" */

static void wake_main(void)
{
	ev_async_send(main_loop, &main_wake);
}

/* Engines' os.exit(): the first status wins; the main thread stops. */
static void on_script_exit(void *ud, int status)
{
	(void)ud;
	int none = -1;
	atomic_compare_exchange_strong(&exit_status, &none, status);
	ev_async_send(main_loop, &exit_wake);
}

static void log_stats(const struct worker *wk)
{
	char line[1024];
	nfq_engine_format_stats(wk->engine, line, sizeof line);
	nfq_log(NFQ_LOG_INFO, "queue %u: %s", wk->opts.queue_num, line);
}

static void on_stats_async(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)loop;
	(void)revents;
	log_stats(w->data);
}

static void on_stop_async(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)w;
	(void)revents;
	ev_break(loop, EVBREAK_ALL);
}

static void on_reload_async(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)loop;
	(void)revents;
	struct worker *wk = w->data;
	char err[sizeof wk->err];
	int rc = nfq_engine_reload_prepare(wk->engine, err, sizeof err);
	pthread_mutex_lock(&lock);
	wk->reload_step = rc == 0 ? RELOAD_PREPARED : RELOAD_FAILED;
	if (rc < 0)
		memcpy(wk->err, err, sizeof err);
	pthread_mutex_unlock(&lock);
	wake_main();
}

static void on_decide_async(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)loop;
	(void)revents;
	struct worker *wk = w->data;
	pthread_mutex_lock(&lock);
	int commit = wk->commit;
	pthread_mutex_unlock(&lock);
	int handed = 0;
	if (commit)
		handed = nfq_engine_reload_commit(wk->engine);
	else
		nfq_engine_reload_abort(wk->engine);
	pthread_mutex_lock(&lock);
	wk->handed = handed;
	wk->reload_step = RELOAD_DONE;
	pthread_mutex_unlock(&lock);
	wake_main();
}

static void on_heap_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct worker *wk = w->data;
	nfq_metrics_worker_heap((unsigned)(wk - workers), nfq_engine_lua_bytes(wk->engine));
}

static void *worker_main(void *arg)
{
	struct worker *wk = arg;
	char err[sizeof wk->err];
	/* The script's metric series write this worker's cells. */
	nfq_metrics_set_worker((unsigned)(wk - workers));
	struct nfq_engine *e = nfq_engine_create(wk->loop, &wk->opts, err, sizeof err);
	pthread_mutex_lock(&lock);
	wk->engine = e;
	int stop_now = stopping;
	pthread_mutex_unlock(&lock);
	if (e && stop_now)
		nfq_engine_interrupt(e);
	int ok = e && nfq_engine_start(e, err, sizeof err) == 0;
	if (ok && wk->kernel_stats_fd >= 0)
		nfq_engine_set_kernel_stats_fd(e, wk->kernel_stats_fd);
	else if (wk->kernel_stats_fd >= 0)
		close(wk->kernel_stats_fd);
	wk->kernel_stats_fd = -1;
	ev_async *asyncs[] = { &wk->reload, &wk->decide, &wk->stats, &wk->stop };
	for (unsigned i = 0; ok && i < sizeof asyncs / sizeof *asyncs; i++) {
		asyncs[i]->data = wk;
		ev_async_start(wk->loop, asyncs[i]);
	}
	if (ok && nfq_metrics_enabled()) {
		nfq_metrics_worker_serving((unsigned)(wk - workers), nfq_engine_stats(e));
		ev_timer_init(&wk->heap, on_heap_timer, 0, HEAP_PUBLISH_S);
		wk->heap.data = wk;
		ev_timer_start(wk->loop, &wk->heap);
	}
	pthread_mutex_lock(&lock);
	wk->started = ok ? 1 : -1;
	if (!ok)
		memcpy(wk->err, err, sizeof err);
	stop_now = stopping;
	pthread_mutex_unlock(&lock);
	wake_main();
	/* A stop asked before this worker served finds it here, not in its loop. */
	if (ok && !stop_now)
		ev_run(wk->loop, 0);
	if (e) {
		nfq_engine_stop(e);
		if (ok)
			log_stats(wk);
	}
	return NULL;
}

/* With lock held: the count of workers in a step. */
static unsigned count_reload_step(enum reload_step step)
{
	unsigned n = 0;
	for (unsigned i = 0; i < n_workers; i++)
		n += workers[i].reload_step == step;
	return n;
}

/*
 * A reload swaps the script in every worker or in none: each prepares the
 * new version beside the running one and reports; once all have, the main
 * thread tells each to commit, or to drop it if any failed; once all have
 * done that, one line says how it went.
 */
static void begin_reload(void)
{
	reloading = 1;
	pthread_mutex_lock(&lock);
	for (unsigned i = 0; i < n_workers; i++) {
		workers[i].reload_step = RELOAD_PREPARING;
		workers[i].err[0] = '\0';
	}
	pthread_mutex_unlock(&lock);
	for (unsigned i = 0; i < n_workers; i++)
		ev_async_send(workers[i].loop, &workers[i].reload);
}

static void advance_reload(void)
{
	const char *script = workers[0].opts.script;
	pthread_mutex_lock(&lock);
	if (count_reload_step(RELOAD_PREPARED) + count_reload_step(RELOAD_FAILED) == n_workers) {
		int commit = count_reload_step(RELOAD_FAILED) == 0;
		for (unsigned i = 0; i < n_workers; i++) {
			workers[i].commit = commit;
			workers[i].reload_step = RELOAD_DECIDING;
		}
		pthread_mutex_unlock(&lock);
		if (!commit) {
			const struct worker *failed = workers;
			while (failed->err[0] == '\0')
				failed++;
			if (n_workers == 1)
				nfq_log(NFQ_LOG_ERROR, "%s: reload of %s failed, version %u keeps running: %s",
					tag, script, version, failed->err);
			else
				nfq_log(NFQ_LOG_ERROR, "%s: reload of %s failed, version %u keeps running on every queue: queue %u: %s",
					tag, script, version, failed->opts.queue_num, failed->err);
		}
		for (unsigned i = 0; i < n_workers; i++)
			ev_async_send(workers[i].loop, &workers[i].decide);
		return;
	}
	if (count_reload_step(RELOAD_DONE) < n_workers) {
		pthread_mutex_unlock(&lock);
		return;
	}
	int committed = workers[0].commit, handed = 0;
	for (unsigned i = 0; i < n_workers; i++) {
		handed += workers[i].handed;
		workers[i].reload_step = RELOAD_IDLE;
	}
	pthread_mutex_unlock(&lock);
	if (committed) {
		version++;
		nfq_metrics_script_reloaded(version);
		nfq_log(NFQ_LOG_INFO, "%s: reloaded %s: version %u runs now, %d held packets handed to it",
			tag, script, version, handed);
	}
	reloading = 0;
	if (reload_again) {
		reload_again = 0;
		begin_reload();
	}
}

/* Every worker has said whether it serves. */
static int all_reported(void)
{
	pthread_mutex_lock(&lock);
	unsigned reported = 0;
	for (unsigned i = 0; i < n_workers; i++)
		reported += workers[i].started != 0;
	pthread_mutex_unlock(&lock);
	return reported == n_workers;
}

static void on_main_wake(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)w;
	(void)revents;
	if (reloading)
		advance_reload();
	if (starting && all_reported())
		ev_break(loop, EVBREAK_ONE);
}

static void on_exit_wake(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)w;
	(void)revents;
	nfq_workers_request_stop();
	ev_break(loop, EVBREAK_ALL);
}

void nfq_workers_reload(void)
{
	if (starting) {
		nfq_log(NFQ_LOG_INFO, "got SIGHUP while starting: reloading once every queue serves");
		reload_again = 1;
		return;
	}
	if (reloading) {
		nfq_log(NFQ_LOG_INFO, "got SIGHUP during a reload: another reload follows it");
		reload_again = 1;
		return;
	}
	nfq_log(NFQ_LOG_INFO, "got SIGHUP, reloading");
	begin_reload();
}

void nfq_workers_log_stats(void)
{
	pthread_mutex_lock(&lock);
	for (unsigned i = 0; i < n_workers; i++)
		if (workers[i].started == 1)
			ev_async_send(workers[i].loop, &workers[i].stats);
	pthread_mutex_unlock(&lock);
}

void nfq_workers_request_stop(void)
{
	pthread_mutex_lock(&lock);
	stopping = 1;
	/* Nothing serves yet: a slow load or on_start need not finish. */
	for (unsigned i = 0; starting && i < n_workers; i++)
		if (workers[i].engine)
			nfq_engine_interrupt(workers[i].engine);
	pthread_mutex_unlock(&lock);
}

int nfq_workers_start(struct ev_loop *loop, const struct nfq_engine_opts *opts,
		      unsigned n, const int *kernel_stats_fds, struct nfq_sender *const *senders)
{
	main_loop = loop;
	ev_async_init(&main_wake, on_main_wake);
	ev_async_start(loop, &main_wake);
	ev_async_init(&exit_wake, on_exit_wake);
	ev_async_start(loop, &exit_wake);
	if (n == 1)
		snprintf(tag, sizeof tag, "queue %u", opts->queue_num);
	else
		snprintf(tag, sizeof tag, "queues %u-%u", opts->queue_num, opts->queue_num + n - 1);
	/* Workers block the signals: they reach the main thread's loop. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	starting = 1;
	for (unsigned i = 0; i < n; i++) {
		struct worker *wk = &workers[i];
		wk->opts = *opts;
		wk->opts.queue_num = opts->queue_num + i;
		wk->opts.own_thread = 1;
		wk->opts.on_exit = on_script_exit;
		/* The worker's engine owns its sender from nfq_engine_create() on. */
		wk->opts.sender = senders ? senders[i] : NULL;
		wk->kernel_stats_fd = kernel_stats_fds[i];
		wk->loop = ev_loop_new(EVFLAG_AUTO);
		ev_async_init(&wk->reload, on_reload_async);
		ev_async_init(&wk->decide, on_decide_async);
		ev_async_init(&wk->stats, on_stats_async);
		ev_async_init(&wk->stop, on_stop_async);
		n_workers = i + 1;
		if (!wk->loop || pthread_create(&wk->thread, NULL, worker_main, wk) != 0) {
			snprintf(wk->err, sizeof wk->err, "cannot start a worker thread");
			wk->started = -1;
			/* The senders no engine took. */
			for (unsigned j = i; senders && j < n; j++)
				nfq_sender_close(senders[j]);
			break;
		}
		wk->has_thread = 1;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!all_reported())
		ev_run(loop, 0);
	starting = 0;
	pthread_mutex_lock(&lock);
	int rc = stopping ? 1 : 0;
	for (unsigned i = 0; i < n_workers && rc == 0; i++) {
		if (workers[i].started >= 0)
			continue;
		/* Among several queues, a reason that names no queue names its own. */
		char which[32];
		int len = snprintf(which, sizeof which, "queue %u", workers[i].opts.queue_num);
		const char *at = strstr(workers[i].err, which);
		int named = at && (at[len] < '0' || at[len] > '9');
		if (n_workers > 1 && !named)
			fprintf(stderr, "nfqlua: %s: %s\n", which, workers[i].err);
		else
			fprintf(stderr, "nfqlua: %s\n", workers[i].err);
		rc = -1;
	}
	pthread_mutex_unlock(&lock);
	if (rc == 0 && reload_again) {
		reload_again = 0;
		begin_reload();
	}
	return rc;
}

/* Join a worker, interrupting its script if the stop takes too long. */
static void join_worker(struct worker *wk)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += STOP_GRACE_MS / 1000;
	if (pthread_timedjoin_np(wk->thread, NULL, &until) == 0)
		return;
	pthread_mutex_lock(&lock);
	nfq_log(NFQ_LOG_WARN, "queue %u: still busy %d s after the stop: interrupting its script",
		wk->opts.queue_num, STOP_GRACE_MS / 1000);
	if (wk->engine)
		nfq_engine_interrupt(wk->engine);
	pthread_mutex_unlock(&lock);
	pthread_join(wk->thread, NULL);
}

void nfq_workers_stop(void)
{
	nfq_workers_request_stop();
	pthread_mutex_lock(&lock);
	for (unsigned i = 0; i < n_workers; i++)
		if (workers[i].started == 1)
			ev_async_send(workers[i].loop, &workers[i].stop);
	pthread_mutex_unlock(&lock);
	for (unsigned i = 0; i < n_workers; i++) {
		struct worker *wk = &workers[i];
		if (wk->has_thread)
			join_worker(wk);
		nfq_engine_free(wk->engine);
		wk->engine = NULL;
		if (wk->loop)
			ev_loop_destroy(wk->loop);
		wk->loop = NULL;
	}
}

int nfq_workers_exit_status(void)
{
	return atomic_load(&exit_status);
}

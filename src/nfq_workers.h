/*
 * nfq_workers.h: the daemon's workers, one thread, libev loop and engine per
 * queue, driven from the main thread's loop: start, reload all or none,
 * counters, stop.
 */
#ifndef NFQ_WORKERS_H
#define NFQ_WORKERS_H

#include "nfq_engine.h"

/* Queues a daemon serves at most: one worker thread each. */
#define NFQ_MAX_WORKERS 64

/*
 * Start a worker for each of the n queues from opts->queue_num on, and run
 * main_loop until every one serves, one failed (its reason printed), or
 * the daemon was asked to stop. kernel_stats_fds[i] (or -1) and senders[i]
 * (senders may be NULL: no sending; see nfq_engine_opts.sender) are handed to
 * worker i. 0 when all serve, -1 when one failed, 1 when stopped.
 */
int nfq_workers_start(struct ev_loop *main_loop, const struct nfq_engine_opts *opts,
		      unsigned n, const int *kernel_stats_fds, struct nfq_sender *const *senders);

/* Reload every worker's script, all or none (SIGHUP). */
void nfq_workers_reload(void);

/* Log every worker's counters (SIGUSR1). */
void nfq_workers_log_stats(void);

/* The daemon stops: from now on, starts and reloads are interrupted. */
void nfq_workers_request_stop(void);

/* Stop every worker (on_stop, fallback verdicts, unbind) and free it. */
void nfq_workers_stop(void);

/* The status a script gave os.exit(), or -1. */
int nfq_workers_exit_status(void);

#endif

/*
 * nfq_metrics_server.h: the daemon's --metrics ADDR: /metrics served over
 * HTTP from a thread of its own, with every queue's counters, the kernel's
 * drops, the workers' Lua heaps, the script's version and the metrics that
 * scripts define (nfq_metrics.h).
 *
 * Workers publish what a scrape reads (a pointer to their counters, their
 * heap size) and go on; the scrape thread only reads, so a slow or hostile
 * client costs the workers nothing.
 */
#ifndef NFQ_METRICS_SERVER_H
#define NFQ_METRICS_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "nfq_core.h"

/* HOST:PORT (IPv4), [IPv6]:PORT or unix:PATH: 0, or -1 with why in err. */
int nfq_metrics_check_addr(const char *addr, char *err, size_t errlen);

/*
 * Bind and listen on addr, and open the kernel's counters: before the
 * daemon gives up root. 0, or -1 with a one-line reason and fix in err.
 */
int nfq_metrics_listen(const char *addr, char *err, size_t errlen);

/*
 * Serve the socket nfq_metrics_listen() opened, for the workers of queues
 * first_queue..first_queue+n_queues-1 running script. 0, or -1 with err.
 */
int nfq_metrics_serve(const char *script, uint32_t first_queue, unsigned n_queues, char *err, size_t errlen);

/* Stop serving (before the workers' engines are freed) and close the socket. */
void nfq_metrics_stop(void);

/* --metrics was given: workers publish their heap then. */
int nfq_metrics_enabled(void);

/* From worker index's thread: its counters, valid until nfq_metrics_stop(). */
void nfq_metrics_worker_serving(unsigned index, const struct nfq_stats *stats);

/* From worker index's thread: its script's Lua heap now. */
void nfq_metrics_worker_heap(unsigned index, size_t bytes);

/* From the main thread: every worker runs script version `version` now. */
void nfq_metrics_script_reloaded(unsigned version);

#endif

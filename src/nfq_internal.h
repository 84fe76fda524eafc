/*
 * nfq_internal.h: what the C files of the core share with each other and
 * with nobody else. The build hides every symbol that nfq_core.h and
 * nfq_engine.h do not export, so these stay out of the libraries' symbol
 * tables.
 */
#ifndef NFQ_INTERNAL_H
#define NFQ_INTERNAL_H

#include <time.h>

#include "nfq_core.h"

/* Milliseconds on the monotonic clock. */
static inline long long nfq_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Packets a batch holds: datagrams read per recvmmsg(), one packet each. */
#define NFQ_BATCH_SLOTS 64

/* Largest payload a verdict can carry: NFQA_PAYLOAD's length is 16 bits. */
#define NFQ_MAX_PAYLOAD (65535 - 4)

/*
 * nfq_queue_receive() for a thread that serves only this queue: it waits up
 * to timeout_ms (> 0) inside recvmmsg(), so the socket need not sit in an
 * epoll set, which costs the kernel work for every message queued to it.
 */
int nfq_queue_receive_in_recv(struct nfq_queue *q, int timeout_ms);

/* Read the kernel's counters through fd (an open
 * /proc/net/netfilter/nfnetlink_queue) from now on; the queue closes it. */
void nfq_queue_set_stats_fd(struct nfq_queue *q, int fd);

/* Append the verdict message for p to the queue's send buffer. */
int nfq_queue_put_verdict(struct nfq_queue *q, const struct nfq_packet *p,
			  uint32_t verdict);
void nfq_queue_link_retained(struct nfq_queue *q, struct nfq_packet *p);
void nfq_queue_unlink_retained(struct nfq_queue *q, struct nfq_packet *p);
/* Verdict p with its queue's fallback verdict, counting it as a fallback. */
void nfq_packet_fallback(struct nfq_packet *p);

#endif

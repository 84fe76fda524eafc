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

/* Big-endian fields in packet bytes, at any alignment. */
static inline uint32_t nfq_get16(const uint8_t *p)
{
	return (uint32_t)p[0] << 8 | p[1];
}

static inline uint32_t nfq_get32(const uint8_t *p)
{
	return nfq_get16(p) << 16 | nfq_get16(p + 2);
}

static inline void nfq_put16(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static inline void nfq_put32(uint8_t *p, uint32_t v)
{
	nfq_put16(p, v >> 16);
	nfq_put16(p + 2, v);
}

/* The Internet checksum (RFC 1071): acc plus the 16-bit words of p[0..n),
 * an odd last byte padded with a zero... */
static inline uint64_t nfq_sum16(const uint8_t *p, size_t n, uint64_t acc)
{
	for (; n > 1; p += 2, n -= 2)
		acc += nfq_get16(p);
	if (n)
		acc += (uint32_t)p[0] << 8;
	return acc;
}

/* ...folded to 16 bits and inverted: the value the checksum field takes. */
static inline uint16_t nfq_fold(uint64_t acc)
{
	while (acc >> 16)
		acc = (acc & 0xffff) + (acc >> 16);
	return (uint16_t)~acc;
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

/* Why the kernel last refused a packet the queue sent ("" if never). */
const char *nfq_queue_send_error(const struct nfq_queue *q);

/* Append the verdict message for p to the queue's send buffer. */
int nfq_queue_put_verdict(struct nfq_queue *q, const struct nfq_packet *p,
			  uint32_t verdict);
void nfq_queue_link_retained(struct nfq_queue *q, struct nfq_packet *p);
void nfq_queue_unlink_retained(struct nfq_queue *q, struct nfq_packet *p);
/* Verdict p with its queue's fallback verdict, counting it as a fallback. */
void nfq_packet_fallback(struct nfq_packet *p);

/* Packets a sender keeps for one flush: one sendmmsg() at most. */
#define NFQ_SEND_BATCH 64

/*
 * nfq_send.c. The check every packet to send passes: one whole IPv4 or IPv6
 * packet whose header lengths match len. 0, or -1 and the reason in why.
 */
int nfq_send_check(const uint8_t *data, size_t len, char *why, size_t whylen);
/* The sender has sockets (an offline queue's has none). */
int nfq_sender_is_raw(const struct nfq_sender *s);
/* The mark a packet leaves with: the script's (has_mark) under the send mark. */
uint32_t nfq_sender_mark(const struct nfq_sender *s, uint32_t mark, int has_mark);
/* Send a checked packet now: 0, or -1 with errno and the reason in why. */
int nfq_sender_send(struct nfq_sender *s, const uint8_t *data, size_t len, uint32_t mark, uint32_t scope,
		    char *why, size_t whylen);
/* Whether one more packet of len bytes may wait for this flush. */
int nfq_sender_has_room(const struct nfq_sender *s, size_t len);
/* Keep a copy of a checked packet for the flush, where the verdict bytes
 * before offset at have gone: 0, or -1 (ENOBUFS without room, ENOMEM). */
int nfq_sender_add(struct nfq_sender *s, const uint8_t *data, size_t len, uint32_t mark, uint32_t scope,
		   size_t at);
unsigned nfq_sender_waiting(const struct nfq_sender *s);
/* The offset in the verdict bytes that the i-th waiting packet goes after. */
size_t nfq_sender_position(const struct nfq_sender *s, unsigned i);
/* Send the waiting packets [from, to) in order: the count the kernel took;
 * *failed counts the others, the last one's reason in why. */
unsigned nfq_sender_send_waiting(struct nfq_sender *s, unsigned from, unsigned to, unsigned *failed,
				 char *why, size_t whylen);
/* The waiting packets have gone. */
void nfq_sender_clear(struct nfq_sender *s);

#endif

/*
 * nfq_core.h: the structs and functions that the C core shares with Lua.
 *
 * This file is the single source of the layout: the Makefile turns the part
 * between the CDEF markers into lua/nfq/cdef.lua for ffi.cdef. Keep that part
 * plain declarations (no macros, no includes), and give every name the nfq_
 * prefix: the FFI namespace is shared with user scripts.
 */
#ifndef NFQ_CORE_H
#define NFQ_CORE_H

#include <stddef.h>
#include <stdint.h>

/* BEGIN CDEF */
enum {
	NFQ_PKT_PENDING = 1,	/* waiting for a verdict */
	NFQ_PKT_VERDICTED = 2,	/* verdict given (or fallback applied) */
	NFQ_PKT_MOVED = 3	/* a slot whose packet was retained into a heap copy */
};

enum {
	NFQ_PF_HW = 1,		/* hw_addr is valid */
	NFQ_PF_TIMESTAMP = 2,	/* ts_sec/ts_usec are valid */
	NFQ_PF_MARK_SET = 4,	/* new_mark goes out with the verdict */
	NFQ_PF_PAYLOAD_SET = 8,	/* new_payload goes out with the verdict */
	NFQ_PF_RETAINED = 16,	/* the script keeps it past its callback */
	NFQ_PF_UID = 32,
	NFQ_PF_GID = 64,
	NFQ_PF_HEAP = 128	/* malloc'd, freed by nfq_packet_release() */
};

struct nfq_queue;

/*
 * One queued packet. The kernel fields are filled by nfq_packet_parse().
 * In a batch slot, payload points into the queue's receive buffer and is
 * valid until the slot is released (gen is bumped then). A retained copy
 * owns its payload (own_payload) and is freed by nfq_packet_release().
 */
struct nfq_packet {
	uint32_t id;
	uint32_t mark;			/* the mark on arrival */
	uint16_t hw_protocol;		/* host byte order */
	uint8_t hook;
	uint8_t state;			/* NFQ_PKT_* */
	uint32_t gen;			/* bumped on release: stale Lua refs notice */
	uint32_t flags;			/* NFQ_PF_* */
	uint32_t payload_len;		/* bytes captured */
	uint32_t cap_len;		/* length before truncation by range */
	const uint8_t *payload;		/* NULL when nothing was copied */
	uint8_t hw_addr[8];
	uint16_t hw_addrlen;
	uint16_t reserved;
	uint32_t indev;
	uint32_t outdev;
	uint32_t physindev;
	uint32_t physoutdev;
	uint32_t uid;
	uint32_t gid;
	int64_t ts_sec;
	int64_t ts_usec;
	uint32_t new_mark;
	uint32_t new_payload_len;
	uint8_t *new_payload;		/* malloc'd by set_payload, freed with the packet */
	uint8_t *own_payload;		/* malloc'd copy of a retained packet's payload */
	struct nfq_queue *queue;	/* NULL once the queue is gone */
	struct nfq_packet *prev;	/* the queue's list of retained packets */
	struct nfq_packet *next;
};

struct nfq_stats {
	uint64_t received;
	uint64_t accepted;
	uint64_t dropped;
	uint64_t repeated;
	uint64_t requeued;
	uint64_t fallback;		/* verdicts given for the script */
	uint64_t verdict_errors;	/* verdicts the kernel refused */
	uint64_t enobufs;		/* receive overruns reported by the kernel */
	uint64_t script_errors;
	uint64_t reloads;		/* scripts swapped in by a reload */
	uint64_t reload_failures;	/* reloads refused, old script kept */
};

/* The kernel's own counters for a queue (/proc/net/netfilter/nfnetlink_queue). */
struct nfq_kernel_stats {
	int64_t waiting;		/* packets queued now */
	int64_t queue_dropped;		/* dropped because the queue was full */
	int64_t user_dropped;		/* dropped because our socket was full */
};

struct nfq_queue_priv;

struct nfq_queue {
	struct nfq_packet *pkts;	/* the current batch */
	uint32_t count;			/* packets in the batch */
	uint32_t pos;			/* next packet to dispatch */
	uint32_t fallback;		/* verdict for packets left without one */
	int32_t fd;
	int32_t queue_num;		/* -1 while unbound */
	uint32_t in_dispatch;		/* verdicts wait for nfq_queue_flush() */
	struct nfq_stats stats;
	char errmsg[256];		/* why the last call failed */
	struct nfq_queue_priv *priv;
};

/* The Lua view of a packet: a pointer plus the generation it was made for. */
struct nfq_lua_packet {
	struct nfq_packet *p;
	uint32_t gen;
	const uint32_t id;
	const uint32_t mark;
	const uint16_t hw_protocol;
	const uint8_t hook;
};

struct nfq_queue *nfq_queue_open(int sockfd);
int nfq_queue_bind(struct nfq_queue *q, uint32_t queue_num, uint32_t mode,
		   uint32_t range, uint32_t max_len, uint32_t sock_len,
		   uint32_t flags);
int nfq_queue_unbind(struct nfq_queue *q);
void nfq_queue_close(struct nfq_queue *q);
int nfq_queue_receive(struct nfq_queue *q, int timeout_ms);
int nfq_queue_flush(struct nfq_queue *q);
void nfq_queue_finish_current(struct nfq_queue *q);
int nfq_queue_kernel_stats(const struct nfq_queue *q, struct nfq_kernel_stats *out);
int nfq_queue_hand_over(struct nfq_queue *q, struct nfq_packet **out, int max);

int nfq_packet_parse(struct nfq_packet *p, const void *msg, size_t len);
void nfq_packet_finish(struct nfq_packet *p);
int nfq_packet_verdict(struct nfq_packet *p, uint32_t verdict);
int nfq_packet_set_payload(struct nfq_packet *p, const void *data, size_t len);
struct nfq_packet *nfq_packet_retain(struct nfq_packet *p);
void nfq_packet_release(struct nfq_packet *p);
/* END CDEF */

#endif

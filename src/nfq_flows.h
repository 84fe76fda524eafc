/*
 * nfq_flows.h: the flow table behind nfq.flows() and the TCP stream bytes
 * behind flow:stream().
 *
 * A table is a fixed array of flow records allocated once at creation: a
 * struct nfq_flow, then the script's own state (its layout declared in Lua),
 * per slot. Flows are found through a chained hash over the slots, kept in
 * one LRU list per timeout class (so each list's tail is the next flow of
 * that class to time out), and end by timeout, TCP close, eviction when full,
 * or removal. A table with an end callback queues ended flows until Lua has
 * shown them to it (nfq_flows_next_ended); the slot keeps its
 * generation until freed, so Lua handles of a freed flow notice.
 *
 * Tables live in a registry by scope (the engine, or NULL in library mode)
 * and name, so that the next version of a script after a reload gets the
 * same table when it asks for the same name and layout.
 */
#ifndef NFQ_FLOWS_H
#define NFQ_FLOWS_H

#include <stdint.h>

#include "nfq_core.h"

#pragma GCC visibility push(default)
/* BEGIN CDEF */
enum {
	NFQ_FLOW_ORIG = 0,		/* the direction of the flow's first packet */
	NFQ_FLOW_REPLY = 1,
	NFQ_FLOW_NONE = -1,		/* nfq_flows_get: no flow (not IP, a cut header, not found) */
	NFQ_FLOW_EFULL = -2,		/* every slot waits for the end callback */
	NFQ_FLOW_MAX = 16000000,	/* the most flows a table holds */
	NFQ_FLOW_RESERVE = 16,		/* slots beyond max, for flows that wait for on_end */
	NFQ_FLOW_RECORD = 112,		/* sizeof(struct nfq_flow): the user area follows */
	NFQ_FLOW_STREAM_MAX = 65536,	/* the most stream bytes per direction */
	NFQ_FLOW_STREAMS_MAX = 65535,	/* the most stream buffers per table */
	NFQ_FLOW_NAME_MAX = 64,
	NFQ_FLOW_GEN_MASK = 0x1fffff	/* generations wrap at 2^21: they fit a Lua handle */
};

/* TCP state bits (struct nfq_flow's tcp), as far as a filter needs them. */
enum {
	NFQ_FLOW_TCP_SYN = 1,		/* a SYN from the originator */
	NFQ_FLOW_TCP_SYNACK = 2,	/* a SYN-ACK from the responder */
	NFQ_FLOW_TCP_ESTABLISHED = 4,	/* the handshake's last ACK, or picked up after the SYN */
	NFQ_FLOW_TCP_FIN_ORIG = 8,
	NFQ_FLOW_TCP_FIN_REPLY = 16,
	NFQ_FLOW_TCP_RST = 32
};

/* Timeout classes: each has its own idle timeout and LRU list. */
enum {
	NFQ_FLOW_T_TCP_SYN = 0,		/* handshake not done */
	NFQ_FLOW_T_TCP_ESTABLISHED = 1,
	NFQ_FLOW_T_TCP_FIN = 2,		/* one side sent FIN */
	NFQ_FLOW_T_TCP_CLOSE = 3,	/* both sent FIN, or a RST: ends after this timeout */
	NFQ_FLOW_T_UDP = 4,		/* one direction seen */
	NFQ_FLOW_T_UDP_STREAM = 5,	/* both directions seen */
	NFQ_FLOW_T_ICMP = 6,
	NFQ_FLOW_T_OTHER = 7,
	NFQ_FLOW_CLASSES = 8
};

/* Why a flow ended (struct nfq_flow's why). */
enum {
	NFQ_FLOW_END_TIMEOUT = 1,
	NFQ_FLOW_END_FIN = 2,
	NFQ_FLOW_END_RST = 3,
	NFQ_FLOW_END_EVICTED = 4,
	NFQ_FLOW_END_REMOVED = 5
};

/* Slot states. */
enum {
	NFQ_FLOW_FREE = 0,
	NFQ_FLOW_LIVE = 1,
	NFQ_FLOW_ENDED = 2,		/* queued for the end callback */
	NFQ_FLOW_ENDING = 3		/* taken by nfq_flows_next_ended, freed at its next call */
};

/* nfq_flows_stream's codes. */
enum {
	NFQ_FLOW_STREAM_ENOTTCP = -1,	/* the flow is not TCP, or the packet not a whole TCP segment */
	NFQ_FLOW_STREAM_EFOREIGN = -2,	/* the packet is not of this flow */
	NFQ_FLOW_STREAM_ENOBUFS = -3,	/* every stream buffer is in use */
	NFQ_FLOW_STREAM_EOFF = -4	/* the table was made without stream bytes */
};

/* One flow; the script's state follows it at the table's user_offset. */
struct nfq_flow {
	uint64_t packets[2];		/* by direction: NFQ_FLOW_ORIG, NFQ_FLOW_REPLY */
	uint64_t bytes[2];		/* IP bytes, as the kernel had them before any cut */
	double first_seen;		/* nfq.now() of the first packet */
	double last_seen;
	uint8_t addr[2][16];		/* the originator's, the responder's (IPv4: first 4 bytes) */
	uint16_t port[2];		/* the same order, host byte order; ICMP echo: the id twice */
	uint8_t family;			/* 4 or 6 */
	uint8_t proto;
	uint8_t dir;			/* of the packet last given to get or find */
	uint8_t tcp;			/* NFQ_FLOW_TCP_* */
	uint8_t state;			/* NFQ_FLOW_FREE... */
	uint8_t why;			/* NFQ_FLOW_END_*, once ended */
	uint8_t tclass;			/* NFQ_FLOW_T_* */
	uint8_t sflags;			/* stream: sequence base known, stream done, per direction */
	uint32_t gen;			/* bumped when the slot is freed, modulo 2^21 */
	uint32_t hnext;			/* hash chain; free list */
	uint32_t isn[2];		/* the sequence number of each direction's first stream byte */
	uint16_t stream[2];		/* each direction's stream buffer, plus 1; 0: none */
};

struct nfq_flows_priv;

/*
 * The Lua handle of a flow is a struct nfq_lua_flow * that points nowhere:
 * its value numbers the table (per Lua state), the slot and the slot's
 * generation (see lua/nfq/flows.lua), so a handle kept past its flow's end
 * raises instead of reading another flow.
 */
struct nfq_lua_flow;

struct nfq_flows {
	uint8_t *slots;			/* capacity records of stride bytes: the table's, which Lua
					 * reads and writes (counters, the script's state) in place */
	uint32_t stride;
	uint32_t user_offset;		/* of the script's state in a record */
	uint32_t max;			/* live flows at most */
	uint32_t capacity;		/* slots: max + NFQ_FLOW_RESERVE */
	uint32_t count;			/* live flows */
	uint32_t ended_head;		/* the queue for the end callback; 0xffffffff: empty */
	uint32_t keep_ended;		/* ended flows wait in the queue (there is an end callback) */
	uint32_t stream_bytes;		/* per direction; 0: no stream buffers */
	uint32_t streams;		/* stream buffers in the pool */
	uint32_t streams_used;
	uint32_t refs;			/* Lua states that hold it */
	uint32_t reserved;
	double timeouts[8];		/* NFQ_FLOW_CLASSES, seconds idle */
	double next_check;		/* no flow times out before: see nfq_flows_expire (-inf after a change of timeouts) */
	struct nfq_flows_priv *priv;
};

/*
 * The table named name (NULL: unnamed) in scope, if one exists with this
 * layout: *reused is 1 and it has one more reference. Otherwise a new table
 * of max flows (user_size bytes of state aligned to user_align each, stream
 * buffers of stream_bytes, streams of them), zeroed, that takes the name:
 * *reused is -1 if a table of that name had another layout (it keeps living
 * for those that hold it, unnamed), 0 if there was none. NULL and errno
 * (EINVAL, ENOMEM) on failure.
 */
struct nfq_flows *nfq_flows_open(const void *scope, const char *name, const char *layout, uint32_t max,
				 uint32_t user_size, uint32_t user_align, uint32_t stream_bytes, uint32_t streams,
				 int *reused);
/* One reference less; the last one frees the table. */
void nfq_flows_release(struct nfq_flows *t);
/*
 * The slot of p's flow, found, or made when create is set; its counters,
 * times, TCP state and dir updated. Before that, up to a few flows whose
 * timeout has passed at now end. now < 0: the table reads CLOCK_MONOTONIC
 * itself (nfq.now()'s clock), once per batch for the packets of a queue's
 * batch. NFQ_FLOW_NONE or NFQ_FLOW_EFULL.
 */
int nfq_flows_get(struct nfq_flows *t, const struct nfq_packet *p, double now, int create);
/* End up to budget flows whose timeout has passed at now: how many ended. */
uint32_t nfq_flows_expire(struct nfq_flows *t, double now, uint32_t budget);
/* End a live flow as removed; -1 if the slot holds no live flow. */
int nfq_flows_remove(struct nfq_flows *t, uint32_t slot);
/*
 * The next ended flow for the end callback (it becomes ENDING), or -1; the
 * flow it gave before is freed first, shown or not (its callback failed).
 */
int nfq_flows_next_ended(struct nfq_flows *t);
/*
 * Add p's TCP payload to its direction's stream bytes (first received bytes
 * win where segments overlap), then give that direction's buffer and how
 * many bytes from its start are contiguous: *data is NULL while no byte was
 * kept. *dir is p's direction. 0 or an NFQ_FLOW_STREAM_E* code. *data
 * belongs to the table's pool: Lua may read it until the flow ends or
 * nfq_flows_stream_done() gives the buffer back.
 */
int nfq_flows_stream(struct nfq_flows *t, uint32_t slot, const struct nfq_packet *p, const uint8_t **data,
		     uint32_t *contiguous, int *dir);
/* Give the flow's stream buffers back; later segments are not kept. */
void nfq_flows_stream_done(struct nfq_flows *t, uint32_t slot);
/* END CDEF */
#pragma GCC visibility pop

#endif

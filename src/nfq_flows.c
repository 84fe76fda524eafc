/*
 * nfq_flows.c: the flow table and TCP stream bytes (see nfq_flows.h). No
 * allocation after nfq_flows_open(): slots, hash buckets and stream buffers
 * are made there, once.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nfq_flows.h"
#include "nfq_internal.h"

_Static_assert(sizeof(struct nfq_flow) == NFQ_FLOW_RECORD, "NFQ_FLOW_RECORD is the record's size");

#define NONE 0xffffffffu
/* Flows whose timeout has passed that one get() ends at most, before its own lookup. */
#define EXPIRE_PER_GET 2

enum { PROTO_ICMP = 1, PROTO_TCP = 6, PROTO_UDP = 17, PROTO_DCCP = 33, PROTO_ICMPV6 = 58,
	PROTO_SCTP = 132, PROTO_UDPLITE = 136 };
enum { TCP_FIN = 1, TCP_SYN = 2, TCP_RST = 4, TCP_ACK = 16 };
/* sflags: the sequence base of a direction is known; a direction's stream is done. */
enum { SEQ_KNOWN = 1, STREAM_DONE = 4 };

/*
 * A flow's key in canonical order (the lower endpoint first), for the hash:
 * in 64-bit words, written and read whole (a word the CPU must assemble from
 * narrower stores waits for them).
 */
struct flow_key {
	uint64_t a[2], b[2];	/* addresses (IPv4: the first 4 bytes, the rest zero) */
	uint64_t rest;		/* ports, then protocol and family */
};

/* What get and stream read from a packet. */
struct pkt_info {
	uint8_t src[16], dst[16];
	uint16_t sport, dport;
	uint8_t proto, family;
	const uint8_t *l4;	/* the transport header */
	uint32_t l4_len;	/* to the end of the IP packet, or of the copy if shorter */
};

/*
 * A slot's place in its class's LRU list, or in the end queue (next). Apart
 * from the records, so that moving a flow to the head touches 8-byte links
 * of its neighbours rather than their 128-byte records.
 */
struct lru_link {
	uint32_t prev, next;
};

/* A stream buffer: stream_bytes of data and a bit per byte saying it was filled. */
struct stream_buf {
	uint32_t contiguous;	/* bytes filled from the start */
	uint32_t next_free;	/* free list, as an index plus 1 */
	uint8_t *data;
	uint8_t *filled;
};

struct nfq_flows_priv {
	uint32_t *buckets;
	uint32_t mask;		/* buckets - 1 */
	uint32_t free_head;	/* free slots through hnext */
	uint32_t ended_tail;
	uint32_t ending;	/* the slot nfq_flows_next_ended gave last */
	uint64_t seed;
	uint32_t lru_head[NFQ_FLOW_CLASSES];	/* most recent */
	uint32_t lru_tail[NFQ_FLOW_CLASSES];
	struct lru_link *links;	/* by slot */
	struct stream_buf *streams;
	uint32_t stream_free;	/* index plus 1; 0: none */
	uint8_t *stream_mem;
	/* the batch get() saw last: see batch_of */
	const struct nfq_queue *pf_queue;
	uint32_t pf_first_id, pf_last_id;
	double batch_now;	/* the clock at the batch's first get(); -1: not read yet */
	/* the registry */
	const void *scope;
	char name[NFQ_FLOW_NAME_MAX];
	char *layout;
	struct nfq_flows *next_named;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct nfq_flows *registry;

static inline struct nfq_flow *slot_at(const struct nfq_flows *t, uint32_t i)
{
	return (struct nfq_flow *)(t->slots + (size_t)i * t->stride);
}

static inline uint64_t mix(uint64_t h, uint64_t w)
{
	h = (h ^ w) * 0x9e3779b97f4a7c15ull;
	return h ^ h >> 29;
}

static inline uint32_t key_hash(const struct flow_key *k, uint64_t seed)
{
	uint64_t h = mix(mix(mix(seed, k->rest), k->a[0]), k->b[0]);
	/* An IPv4 address is the first 4 bytes of its 16: the other words are zero. */
	if ((uint8_t)(k->rest >> 40) != 4)
		h = mix(mix(h, k->a[1]), k->b[1]);
	return (uint32_t)(h ^ h >> 32);
}

static inline void make_key(struct flow_key *k, uint8_t family, uint8_t proto, const uint8_t *a, uint16_t pa,
			    const uint8_t *b, uint16_t pb)
{
	uint64_t x[2], y[2];
	memcpy(x, a, 16);
	memcpy(y, b, 16);
	/* Any fixed order puts both directions of a flow in one key: words, not bytes. */
	int swap = x[0] != y[0] ? x[0] > y[0] : x[1] != y[1] ? x[1] > y[1] : pa > pb;
	k->a[0] = swap ? y[0] : x[0];
	k->a[1] = swap ? y[1] : x[1];
	k->b[0] = swap ? x[0] : y[0];
	k->b[1] = swap ? x[1] : y[1];
	uint64_t lo = swap ? pb : pa, hi = swap ? pa : pb;
	k->rest = lo | hi << 16 | (uint64_t)proto << 32 | (uint64_t)family << 40;
}

static uint32_t flow_bucket(const struct nfq_flows *t, const struct nfq_flow *f)
{
	struct flow_key k;
	make_key(&k, f->family, f->proto, f->addr[0], f->port[0], f->addr[1], f->port[1]);
	return key_hash(&k, t->priv->seed) & t->priv->mask;
}

/* An IPv4 address as the first 4 bytes of 16, in two whole words (see struct flow_key). */
static inline void put_addr4(uint8_t *to, const uint8_t *from)
{
	uint32_t v;
	memcpy(&v, from, 4);
	uint64_t w[2] = { v, 0 };
	memcpy(to, w, 16);
}

/* The flow key of an IP packet; -1 for anything else, or a cut header. */
static int parse_packet(const uint8_t *ip, uint32_t len, struct pkt_info *pi)
{
	uint8_t proto;
	int off = nfq_transport_offset(ip, len, &proto);
	if (off < 0)
		return -1;
	pi->sport = pi->dport = 0;
	uint32_t end = len;
	if (ip[0] >> 4 == 4) {
		pi->family = 4;
		put_addr4(pi->src, ip + 12);
		put_addr4(pi->dst, ip + 16);
		if (nfq_get16(ip + 2) < end)
			end = nfq_get16(ip + 2);
	} else {
		pi->family = 6;
		memcpy(pi->src, ip + 8, 16);
		memcpy(pi->dst, ip + 24, 16);
		if (40 + nfq_get16(ip + 4) < end)
			end = 40 + nfq_get16(ip + 4);
	}
	if ((uint32_t)off > end)
		return -1;
	pi->proto = proto;
	pi->l4 = ip + off;
	pi->l4_len = end - (uint32_t)off;
	const uint8_t *l4 = pi->l4;
	switch (proto) {
	case PROTO_TCP:
		if (pi->l4_len < 20)
			return -1;
		break;
	case PROTO_UDP:
	case PROTO_UDPLITE:
		if (pi->l4_len < 8)
			return -1;
		break;
	case PROTO_SCTP:
	case PROTO_DCCP:
		if (pi->l4_len < 4)
			return -1;
		break;
	case PROTO_ICMP:
	case PROTO_ICMPV6:
		if (pi->l4_len < 4)
			return -1;
		/* Echo request and reply share the identifier. */
		if (pi->l4_len >= 8 && (l4[0] == 8 || l4[0] == 0 || l4[0] == 128 || l4[0] == 129)
		    && (l4[0] >= 128) == (proto == PROTO_ICMPV6))
			pi->sport = pi->dport = (uint16_t)nfq_get16(l4 + 4);
		return 0;
	default:
		return 0;
	}
	pi->sport = (uint16_t)nfq_get16(l4);
	pi->dport = (uint16_t)nfq_get16(l4 + 2);
	return 0;
}

/* The direction of the packet in flow f, or -1 if it is not of f. */
static int match(const struct nfq_flow *f, const struct pkt_info *pi)
{
	if (f->proto != pi->proto || f->family != pi->family)
		return -1;
	if (f->port[0] == pi->sport && f->port[1] == pi->dport &&
	    !memcmp(f->addr[0], pi->src, 16) && !memcmp(f->addr[1], pi->dst, 16))
		return NFQ_FLOW_ORIG;
	if (f->port[0] == pi->dport && f->port[1] == pi->sport &&
	    !memcmp(f->addr[0], pi->dst, 16) && !memcmp(f->addr[1], pi->src, 16))
		return NFQ_FLOW_REPLY;
	return -1;
}

static void lru_unlink(struct nfq_flows *t, const struct nfq_flow *f, uint32_t i)
{
	struct nfq_flows_priv *pv = t->priv;
	struct lru_link *l = &pv->links[i];
	if (l->prev != NONE)
		pv->links[l->prev].next = l->next;
	else
		pv->lru_head[f->tclass] = l->next;
	if (l->next != NONE)
		pv->links[l->next].prev = l->prev;
	else
		pv->lru_tail[f->tclass] = l->prev;
}

static void lru_push(struct nfq_flows *t, const struct nfq_flow *f, uint32_t i)
{
	struct nfq_flows_priv *pv = t->priv;
	uint32_t head = pv->lru_head[f->tclass];
	pv->links[i].prev = NONE;
	pv->links[i].next = head;
	if (head != NONE)
		pv->links[head].prev = i;
	else
		pv->lru_tail[f->tclass] = i;
	pv->lru_head[f->tclass] = i;
}

static void hash_unlink(struct nfq_flows *t, struct nfq_flow *f, uint32_t i)
{
	uint32_t *link = &t->priv->buckets[flow_bucket(t, f)];
	while (*link != i)
		link = &slot_at(t, *link)->hnext;
	*link = f->hnext;
}

static void stream_put(struct nfq_flows *t, struct nfq_flow *f, int dir)
{
	if (!f->stream[dir])
		return;
	struct stream_buf *s = &t->priv->streams[f->stream[dir] - 1];
	s->next_free = t->priv->stream_free;
	t->priv->stream_free = f->stream[dir];
	t->streams_used--;
	f->stream[dir] = 0;
}

static void slot_free(struct nfq_flows *t, struct nfq_flow *f, uint32_t i)
{
	f->state = NFQ_FLOW_FREE;
	f->gen = (f->gen + 1) & NFQ_FLOW_GEN_MASK;
	f->hnext = t->priv->free_head;
	t->priv->free_head = i;
}

/* Take a live flow out of the lookup: to the end queue, or free. */
static void end_flow(struct nfq_flows *t, uint32_t i, uint8_t why)
{
	struct nfq_flow *f = slot_at(t, i);
	hash_unlink(t, f, i);
	lru_unlink(t, f, i);
	stream_put(t, f, 0);
	stream_put(t, f, 1);
	t->count--;
	f->why = why;
	if (!t->keep_ended) {
		slot_free(t, f, i);
		return;
	}
	f->state = NFQ_FLOW_ENDED;
	t->priv->links[i].next = NONE;
	if (t->ended_head == NONE)
		t->ended_head = i;
	else
		t->priv->links[t->priv->ended_tail].next = i;
	t->priv->ended_tail = i;
}

static uint8_t timeout_reason(const struct nfq_flow *f)
{
	if (f->tclass != NFQ_FLOW_T_TCP_CLOSE)
		return NFQ_FLOW_END_TIMEOUT;
	return f->tcp & NFQ_FLOW_TCP_RST ? NFQ_FLOW_END_RST : NFQ_FLOW_END_FIN;
}

/*
 * The tail of each class is its next flow to time out. While they were all
 * looked at, t->next_check is the earliest time one of them can; it only
 * moves later as tails leave or are seen again, and get() lowers it when a
 * flow becomes a tail, so a get() before then reads no tail at all.
 */
uint32_t nfq_flows_expire(struct nfq_flows *t, double now, uint32_t budget)
{
	uint32_t ended = 0;
	double next = HUGE_VAL;
	for (int c = 0; c < NFQ_FLOW_CLASSES; c++) {
		uint32_t i;
		while ((i = t->priv->lru_tail[c]) != NONE) {
			const struct nfq_flow *f = slot_at(t, i);
			if (!(now - f->last_seen > t->timeouts[c])) {
				if (f->last_seen + t->timeouts[c] < next)
					next = f->last_seen + t->timeouts[c];
				break;
			}
			if (ended == budget) {
				next = -HUGE_VAL;	/* more are due: look again next time */
				break;
			}
			end_flow(t, i, timeout_reason(f));
			ended++;
		}
	}
	t->next_check = next;
	return ended;
}

/* The least recently seen flow of all classes, made room for. */
static void evict_one(struct nfq_flows *t)
{
	uint32_t oldest = NONE;
	for (int c = 0; c < NFQ_FLOW_CLASSES; c++) {
		uint32_t i = t->priv->lru_tail[c];
		if (i != NONE && (oldest == NONE || slot_at(t, i)->last_seen < slot_at(t, oldest)->last_seen))
			oldest = i;
	}
	if (oldest != NONE)
		end_flow(t, oldest, NFQ_FLOW_END_EVICTED);
}

static uint8_t tcp_class(uint8_t tcp)
{
	if (tcp & NFQ_FLOW_TCP_RST)
		return NFQ_FLOW_T_TCP_CLOSE;
	uint8_t fins = tcp & (NFQ_FLOW_TCP_FIN_ORIG | NFQ_FLOW_TCP_FIN_REPLY);
	if (fins == (NFQ_FLOW_TCP_FIN_ORIG | NFQ_FLOW_TCP_FIN_REPLY))
		return NFQ_FLOW_T_TCP_CLOSE;
	if (fins)
		return NFQ_FLOW_T_TCP_FIN;
	if (tcp & NFQ_FLOW_TCP_ESTABLISHED)
		return NFQ_FLOW_T_TCP_ESTABLISHED;
	return NFQ_FLOW_T_TCP_SYN;
}

/* A TCP segment's effect on the flow's state bits and sequence bases. */
static void track_tcp(struct nfq_flow *f, const struct pkt_info *pi, int dir, int is_new)
{
	uint8_t flags = pi->l4[13];
	uint32_t seq = nfq_get32(pi->l4 + 4);
	if (flags & TCP_RST)
		f->tcp |= NFQ_FLOW_TCP_RST;
	if (flags & TCP_SYN) {
		if (flags & TCP_ACK) {
			if (dir == NFQ_FLOW_REPLY)
				f->tcp |= NFQ_FLOW_TCP_SYNACK;
		} else if (dir == NFQ_FLOW_ORIG) {
			f->tcp |= NFQ_FLOW_TCP_SYN;
		}
		/* The SYN takes one sequence number: the stream starts after it. */
		if (!(f->sflags & (SEQ_KNOWN << dir))) {
			f->isn[dir] = seq + 1;
			f->sflags |= (uint8_t)(SEQ_KNOWN << dir);
		}
	} else if (is_new) {
		/* Picked up after its handshake, as conntrack's loose tracking does. */
		f->tcp |= NFQ_FLOW_TCP_ESTABLISHED;
	} else if ((flags & TCP_ACK) && dir == NFQ_FLOW_ORIG && (f->tcp & NFQ_FLOW_TCP_SYNACK)) {
		f->tcp |= NFQ_FLOW_TCP_ESTABLISHED;
	}
	if (flags & TCP_FIN)
		f->tcp |= dir == NFQ_FLOW_ORIG ? NFQ_FLOW_TCP_FIN_ORIG : NFQ_FLOW_TCP_FIN_REPLY;
}

static uint8_t class_of(const struct nfq_flow *f)
{
	switch (f->proto) {
	case PROTO_TCP:
		return tcp_class(f->tcp);
	case PROTO_UDP:
	case PROTO_UDPLITE:
		return f->packets[NFQ_FLOW_REPLY] ? NFQ_FLOW_T_UDP_STREAM : NFQ_FLOW_T_UDP;
	case PROTO_ICMP:
	case PROTO_ICMPV6:
		return NFQ_FLOW_T_ICMP;
	default:
		return NFQ_FLOW_T_OTHER;
	}
}

/*
 * Tables of this many flows or more prefetch each batch (below, records and
 * buckets stay in the CPU's caches and prefetching is work for nothing).
 */
#define PREFETCH_MIN_FLOWS 4096
/* The bytes of a record prefetch_batch fetches at most: three cache lines. */
#define PREFETCH_RECORD_MAX 192

/*
 * Whether p is a packet of its queue's current batch (1), the first of a
 * batch that get() sees (2: the batch is remembered from p to its end), or
 * not in a batch at all (0: a retained packet, a packet of the script's own).
 */
static int batch_of(struct nfq_flows_priv *pv, const struct nfq_packet *p)
{
	const struct nfq_queue *q = p->queue;
	if (!q || p < q->pkts || p >= q->pkts + q->count)
		return 0;
	if (q == pv->pf_queue && p->id - pv->pf_first_id <= pv->pf_last_id - pv->pf_first_id)
		return 1;
	pv->pf_queue = q;
	pv->pf_first_id = p->id;
	pv->pf_last_id = q->pkts[q->count - 1].id;
	pv->batch_now = -1;
	return 2;
}

/*
 * With many flows, get() spends most of its time waiting for two loads that
 * miss the caches: the hash bucket, then the flow's record. Packets come in
 * batches, so at the first get() of a batch's packet p the buckets of p and
 * the packets after it are fetched together, then the records they point
 * to, and the misses overlap instead of coming one per packet. Only a hint:
 * get() computes each bucket again (the script may change a packet in
 * between), so what was fetched is only ever found in the cache.
 */
static void prefetch_batch(struct nfq_flows *t, const struct nfq_packet *p)
{
	const struct nfq_queue *q = p->queue;
	struct nfq_flows_priv *pv = t->priv;
	uint32_t from = (uint32_t)(p - q->pkts), to = q->count < NFQ_BATCH_SLOTS ? q->count : NFQ_BATCH_SLOTS;
	uint32_t bucket[NFQ_BATCH_SLOTS];
	for (uint32_t j = from; j < to; j++) {
		const struct nfq_packet *b = &q->pkts[j];
		struct pkt_info pi;
		bucket[j] = NONE;
		if (!b->payload || parse_packet(b->payload, b->payload_len, &pi) < 0)
			continue;
		struct flow_key k;
		make_key(&k, pi.family, pi.proto, pi.src, pi.sport, pi.dst, pi.dport);
		bucket[j] = key_hash(&k, pv->seed) & pv->mask;
		__builtin_prefetch(&pv->buckets[bucket[j]]);
	}
	for (uint32_t j = from; j < to; j++) {
		uint32_t i = bucket[j] == NONE ? NONE : pv->buckets[bucket[j]];
		if (i == NONE)
			continue;
		const uint8_t *rec = (const uint8_t *)slot_at(t, i);
		__builtin_prefetch(rec, 1);
		__builtin_prefetch(rec + 64, 1);
		/* A record is not line-aligned: its end (the script's state, for
		 * a small one) is often on a third line. */
		__builtin_prefetch(rec + (t->stride < PREFETCH_RECORD_MAX ? t->stride : PREFETCH_RECORD_MAX) - 1, 1);
		__builtin_prefetch(&pv->links[i], 1);
	}
}

static double monotonic_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int lookup(struct nfq_flows *t, const struct pkt_info *pi, uint32_t bucket, int *dir)
{
	for (uint32_t i = t->priv->buckets[bucket]; i != NONE; i = slot_at(t, i)->hnext) {
		int d = match(slot_at(t, i), pi);
		if (d >= 0) {
			*dir = d;
			return (int)i;
		}
	}
	return NFQ_FLOW_NONE;
}

static int create(struct nfq_flows *t, const struct pkt_info *pi, uint32_t bucket, double now)
{
	if (t->count >= t->max)
		evict_one(t);
	uint32_t i = t->priv->free_head;
	if (i == NONE)
		return NFQ_FLOW_EFULL;
	struct nfq_flow *f = slot_at(t, i);
	t->priv->free_head = f->hnext;
	uint32_t gen = f->gen;
	memset(f, 0, t->stride);
	f->gen = gen;
	memcpy(f->addr[0], pi->src, 16);
	memcpy(f->addr[1], pi->dst, 16);
	f->port[0] = pi->sport;
	f->port[1] = pi->dport;
	f->family = pi->family;
	f->proto = pi->proto;
	f->state = NFQ_FLOW_LIVE;
	f->first_seen = now;
	f->hnext = t->priv->buckets[bucket];
	t->priv->buckets[bucket] = i;
	f->tclass = class_of(f);
	lru_push(t, f, i);
	t->count++;
	return (int)i;
}

int nfq_flows_get(struct nfq_flows *t, const struct nfq_packet *p, double now, int create_it)
{
	struct pkt_info pi;
	if (!p->payload || parse_packet(p->payload, p->payload_len, &pi) < 0)
		return NFQ_FLOW_NONE;
	int batch = batch_of(t->priv, p);
	if (batch == 2 && t->count >= PREFETCH_MIN_FLOWS)
		prefetch_batch(t, p);
	/* nfq.now() once per batch: the clock costs as much as the lookup. */
	if (now < 0) {
		now = batch && t->priv->batch_now >= 0 ? t->priv->batch_now : monotonic_now();
		if (batch)
			t->priv->batch_now = now;
	}
	if (now > t->next_check)
		nfq_flows_expire(t, now, EXPIRE_PER_GET);
	struct flow_key k;
	make_key(&k, pi.family, pi.proto, pi.src, pi.sport, pi.dst, pi.dport);
	uint32_t bucket = key_hash(&k, t->priv->seed) & t->priv->mask;
	int dir = NFQ_FLOW_ORIG;
	int i = lookup(t, &pi, bucket, &dir);
	/* A new connection on the ports of a closed one ends the closed one. */
	if (i >= 0 && pi.proto == PROTO_TCP && slot_at(t, (uint32_t)i)->tclass == NFQ_FLOW_T_TCP_CLOSE &&
	    (pi.l4[13] & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN && create_it) {
		end_flow(t, (uint32_t)i, timeout_reason(slot_at(t, (uint32_t)i)));
		i = NFQ_FLOW_NONE;
	}
	if (!create_it) {
		if (i >= 0)
			slot_at(t, (uint32_t)i)->dir = (uint8_t)dir;
		return i;
	}
	int is_new = 0;
	if (i < 0) {
		i = create(t, &pi, bucket, now);
		if (i < 0)
			return i;
		dir = NFQ_FLOW_ORIG;
		is_new = 1;
	}
	struct nfq_flow *f = slot_at(t, (uint32_t)i);
	f->dir = (uint8_t)dir;
	f->packets[dir]++;
	f->bytes[dir] += p->cap_len > p->payload_len ? p->cap_len : p->payload_len;
	f->last_seen = now;
	if (pi.proto == PROTO_TCP)
		track_tcp(f, &pi, dir, is_new);
	/* Already the most recent of its class: nothing to move. */
	uint8_t tclass = class_of(f);
	if (tclass != f->tclass || t->priv->lru_head[tclass] != (uint32_t)i) {
		lru_unlink(t, f, (uint32_t)i);
		f->tclass = tclass;
		lru_push(t, f, (uint32_t)i);
	}
	if (t->priv->lru_tail[tclass] == (uint32_t)i && now + t->timeouts[tclass] < t->next_check)
		t->next_check = now + t->timeouts[tclass];
	return i;
}

int nfq_flows_remove(struct nfq_flows *t, uint32_t slot)
{
	if (slot >= t->capacity || slot_at(t, slot)->state != NFQ_FLOW_LIVE)
		return -1;
	end_flow(t, slot, NFQ_FLOW_END_REMOVED);
	return 0;
}

int nfq_flows_next_ended(struct nfq_flows *t)
{
	/* The one before has been shown, or its callback failed: free it. */
	uint32_t shown = t->priv->ending;
	if (shown != NONE && slot_at(t, shown)->state == NFQ_FLOW_ENDING)
		slot_free(t, slot_at(t, shown), shown);
	t->priv->ending = NONE;
	uint32_t i = t->ended_head;
	if (i == NONE)
		return -1;
	struct nfq_flow *f = slot_at(t, i);
	t->ended_head = t->priv->links[i].next;
	f->state = NFQ_FLOW_ENDING;
	t->priv->ending = i;
	return (int)i;
}

/* Copy into s the bytes of [off, off + n) not filled yet: first received wins. */
static void stream_fill(struct stream_buf *s, uint32_t cap, uint32_t off, const uint8_t *bytes, uint32_t n)
{
	if (off >= cap)
		return;
	if (n > cap - off)
		n = cap - off;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t at = off + i;
		uint8_t bit = (uint8_t)(1u << (at & 7));
		if (!(s->filled[at >> 3] & bit)) {
			s->filled[at >> 3] |= bit;
			s->data[at] = bytes[i];
		}
	}
	while (s->contiguous < cap && (s->filled[s->contiguous >> 3] & (1u << (s->contiguous & 7))))
		s->contiguous++;
}

int nfq_flows_stream(struct nfq_flows *t, uint32_t slot, const struct nfq_packet *p, const uint8_t **data,
		     uint32_t *contiguous, int *dir_out)
{
	struct nfq_flow *f = slot_at(t, slot);
	struct pkt_info pi;
	*data = NULL;
	*contiguous = 0;
	if (!t->stream_bytes)
		return NFQ_FLOW_STREAM_EOFF;
	if (f->proto != PROTO_TCP || !p->payload || parse_packet(p->payload, p->payload_len, &pi) < 0 ||
	    pi.proto != PROTO_TCP)
		return NFQ_FLOW_STREAM_ENOTTCP;
	int dir = match(f, &pi);
	if (dir < 0)
		return NFQ_FLOW_STREAM_EFOREIGN;
	*dir_out = dir;
	uint32_t doff = (uint32_t)(pi.l4[12] >> 4) * 4;
	if (doff < 20 || doff > pi.l4_len)
		return NFQ_FLOW_STREAM_ENOTTCP;
	const uint8_t *payload = pi.l4 + doff;
	uint32_t n = pi.l4_len - doff;
	/* Data on a SYN (TCP Fast Open) starts after the SYN's sequence number. */
	uint32_t seq = nfq_get32(pi.l4 + 4) + (pi.l4[13] & TCP_SYN ? 1 : 0);
	if (n && !(f->sflags & (SEQ_KNOWN << dir))) {
		/* The SYN was missed: the stream starts at the first data seen. */
		f->isn[dir] = seq;
		f->sflags |= (uint8_t)(SEQ_KNOWN << dir);
	}
	if (n && !f->stream[dir] && !(f->sflags & (STREAM_DONE << dir))) {
		uint32_t s = t->priv->stream_free;
		if (!s)
			return NFQ_FLOW_STREAM_ENOBUFS;
		struct stream_buf *b = &t->priv->streams[s - 1];
		t->priv->stream_free = b->next_free;
		t->streams_used++;
		b->contiguous = 0;
		memset(b->filled, 0, (t->stream_bytes + 7) / 8);
		f->stream[dir] = (uint16_t)s;
	}
	if (!f->stream[dir])
		return 0;
	struct stream_buf *b = &t->priv->streams[f->stream[dir] - 1];
	if (n) {
		/* Where this segment lies from the stream's start; bytes before it are dropped. */
		int32_t off = (int32_t)(seq - f->isn[dir]);
		if (off < 0) {
			uint32_t skip = (uint32_t)-(int64_t)off;
			if (skip < n)
				stream_fill(b, t->stream_bytes, 0, payload + skip, n - skip);
		} else {
			stream_fill(b, t->stream_bytes, (uint32_t)off, payload, n);
		}
	}
	*data = b->data;
	*contiguous = b->contiguous;
	return 0;
}

void nfq_flows_stream_done(struct nfq_flows *t, uint32_t slot)
{
	struct nfq_flow *f = slot_at(t, slot);
	stream_put(t, f, 0);
	stream_put(t, f, 1);
	f->sflags |= STREAM_DONE | STREAM_DONE << 1;
}

static void table_free(struct nfq_flows *t)
{
	if (!t)
		return;
	if (t->priv) {
		free(t->priv->buckets);
		free(t->priv->links);
		free(t->priv->streams);
		free(t->priv->stream_mem);
		free(t->priv->layout);
		free(t->priv);
	}
	free(t->slots);
	free(t);
}

static uint64_t fresh_seed(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	static uint64_t counter;
	uint64_t s = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec ^
		     __atomic_add_fetch(&counter, 0x632be59bd9b4e019ull, __ATOMIC_RELAXED);
	return s | 1;
}

static struct nfq_flows *table_new(uint32_t max, uint32_t user_size, uint32_t user_align,
				   uint32_t stream_bytes, uint32_t streams)
{
	struct nfq_flows *t = calloc(1, sizeof *t);
	if (!t || !(t->priv = calloc(1, sizeof *t->priv))) {
		table_free(t);
		return NULL;
	}
	struct nfq_flows_priv *pv = t->priv;
	uint32_t align = user_align < 8 ? 8 : user_align;
	t->user_offset = (NFQ_FLOW_RECORD + align - 1) / align * align;
	t->stride = (t->user_offset + user_size + align - 1) / align * align;
	t->max = max;
	t->capacity = max + NFQ_FLOW_RESERVE;
	t->ended_head = NONE;
	t->refs = 1;
	/* The power of two above max: at most 8 bytes per flow, and a full table's chains short. */
	uint32_t buckets = 16;
	while (buckets <= max)
		buckets <<= 1;
	pv->mask = buckets - 1;
	pv->seed = fresh_seed();
	pv->ended_tail = NONE;
	t->next_check = -HUGE_VAL;
	pv->ending = NONE;
	t->slots = aligned_alloc(64, ((size_t)t->capacity * t->stride + 63) / 64 * 64);
	pv->buckets = malloc(buckets * sizeof *pv->buckets);
	pv->links = malloc(t->capacity * sizeof *pv->links);
	if (!t->slots || !pv->buckets || !pv->links)
		goto nomem;
	memset(t->slots, 0, (size_t)t->capacity * t->stride);
	memset(pv->buckets, 0xff, buckets * sizeof *pv->buckets);
	for (uint32_t i = 0; i < t->capacity; i++)
		slot_at(t, i)->hnext = i + 1 < t->capacity ? i + 1 : NONE;
	for (int c = 0; c < NFQ_FLOW_CLASSES; c++)
		pv->lru_head[c] = pv->lru_tail[c] = NONE;
	if (stream_bytes && streams) {
		size_t bitmap = (stream_bytes + 7) / 8;
		pv->streams = calloc(streams, sizeof *pv->streams);
		pv->stream_mem = malloc((size_t)streams * (stream_bytes + bitmap));
		if (!pv->streams || !pv->stream_mem)
			goto nomem;
		for (uint32_t i = 0; i < streams; i++) {
			pv->streams[i].data = pv->stream_mem + (size_t)i * (stream_bytes + bitmap);
			pv->streams[i].filled = pv->streams[i].data + stream_bytes;
			pv->streams[i].next_free = i + 1 < streams ? i + 2 : 0;
		}
		pv->stream_free = 1;
		t->stream_bytes = stream_bytes;
		t->streams = streams;
	}
	return t;
nomem:
	table_free(t);
	errno = ENOMEM;
	return NULL;
}

static void registry_unlink(struct nfq_flows *t)
{
	for (struct nfq_flows **link = &registry; *link; link = &(*link)->priv->next_named) {
		if (*link == t) {
			*link = t->priv->next_named;
			t->priv->next_named = NULL;
			return;
		}
	}
}

struct nfq_flows *nfq_flows_open(const void *scope, const char *name, const char *layout, uint32_t max,
				 uint32_t user_size, uint32_t user_align, uint32_t stream_bytes, uint32_t streams,
				 int *reused)
{
	*reused = 0;
	if (max < 1 || max > NFQ_FLOW_MAX || user_align < 1 || user_align > 64 || (user_align & (user_align - 1)) ||
	    user_size > 65536 || stream_bytes > NFQ_FLOW_STREAM_MAX || streams > NFQ_FLOW_STREAMS_MAX ||
	    (name && strlen(name) >= NFQ_FLOW_NAME_MAX) || !layout) {
		errno = EINVAL;
		return NULL;
	}
	pthread_mutex_lock(&registry_lock);
	struct nfq_flows *t = NULL;
	if (name) {
		for (t = registry; t; t = t->priv->next_named)
			if (t->priv->scope == scope && !strcmp(t->priv->name, name))
				break;
		if (t && !strcmp(t->priv->layout, layout)) {
			t->refs++;
			*reused = 1;
			pthread_mutex_unlock(&registry_lock);
			return t;
		}
		if (t) {
			/* Those that hold it keep it; the name goes to the new table. */
			registry_unlink(t);
			t->priv->name[0] = '\0';
			*reused = -1;
		}
	}
	t = table_new(max, user_size, user_align, stream_bytes, streams);
	if (t && !(t->priv->layout = strdup(layout))) {
		table_free(t);
		t = NULL;
		errno = ENOMEM;
	}
	if (t && name) {
		t->priv->scope = scope;
		strcpy(t->priv->name, name);
		t->priv->next_named = registry;
		registry = t;
	}
	pthread_mutex_unlock(&registry_lock);
	return t;
}

void nfq_flows_release(struct nfq_flows *t)
{
	if (!t)
		return;
	pthread_mutex_lock(&registry_lock);
	int last = --t->refs == 0;
	if (last && t->priv->name[0])
		registry_unlink(t);
	pthread_mutex_unlock(&registry_lock);
	if (last)
		table_free(t);
}

/*
 * nfq_core.h: the structs and functions that the C core shares with Lua.
 *
 * This file is the single source of the layout: the Makefile turns the part
 * between the CDEF markers into lua/nfq/cdef.lua for ffi.cdef. Keep that part
 * plain declarations (no macros, no includes), and give every name the nfq_
 * prefix: the FFI namespace is shared with user scripts. The functions
 * declared there are the core's exports (the build hides everything else);
 * spec/09-build_spec.lua checks that none collides with libnetfilter_queue,
 * which uses the same prefix.
 */
#ifndef NFQ_CORE_H
#define NFQ_CORE_H

#include <stddef.h>
#include <stdint.h>

#pragma GCC visibility push(default)
/* BEGIN CDEF */
/*
 * Verdicts, as the kernel numbers them (NF_* in linux/netfilter.h). Only the
 * low byte is the verdict (NFQ_VERDICT_MASK); NFQ_QUEUE carries the target
 * queue in the high 16 bits, and NFQ_QUEUE_BYPASS accepts when nobody
 * listens there.
 */
enum {
	NFQ_DROP = 0,
	NFQ_ACCEPT = 1,
	NFQ_STOLEN = 2,
	NFQ_QUEUE = 3,
	NFQ_REPEAT = 4,
	NFQ_STOP = 5,
	NFQ_VERDICT_MASK = 0xff,
	NFQ_QUEUE_BYPASS = 0x8000,
	NFQ_QUEUE_SHIFT = 16
};

/* Copy modes (NFQNL_COPY_*): COPY_NONE is refused, it delivers nothing. */
enum {
	NFQ_COPY_NONE = 0,
	NFQ_COPY_META = 1,
	NFQ_COPY_PACKET = 2
};

/*
 * The most bytes of a packet the kernel copies to a queue
 * (NFQNL_MAX_COPY_RANGE: 65535 less an attribute header); a larger packet
 * arrives truncated.
 */
enum {
	NFQ_MAX_COPY_RANGE = 65531
};

/* Netfilter hooks (NF_INET_*), as packets report them. */
enum {
	NFQ_HOOK_PREROUTING = 0,
	NFQ_HOOK_INPUT = 1,
	NFQ_HOOK_FORWARD = 2,
	NFQ_HOOK_OUTPUT = 3,
	NFQ_HOOK_POSTROUTING = 4
};

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
	NFQ_PF_HEAP = 128,	/* malloc'd, freed by nfq_packet_release() */
	NFQ_PF_CT = 256,	/* ct_id, ct_mark, ct_status are valid */
	NFQ_PF_CT_INFO = 512,	/* ct_info is valid */
	NFQ_PF_VLAN = 1024,
	NFQ_PF_SKBINFO = 2048,
	NFQ_PF_PRIORITY = 4096,
	NFQ_PF_CONNMARK_SET = 8192,	/* new_connmark goes out with the verdict */
	NFQ_PF_FALLBACK = 16384		/* its verdict was the fallback one */
};

/*
 * pkt:bypass(): the mark bit it sets by default (--bypass-mark), for the
 * CONNMARK rules that keep the rest of the connection out of the queue.
 * Clear of the low bits that send marks and classifiers tend to use.
 */
enum {
	NFQ_BYPASS_MARK = 0x40000000
};

/* Queue flags (NFQA_CFG_F_*), chosen at bind time. */
enum {
	NFQ_FLAG_FAIL_OPEN = 1,
	NFQ_FLAG_CONNTRACK = 2,
	NFQ_FLAG_GSO = 4,
	NFQ_FLAG_UID_GID = 8,
	NFQ_FLAG_SECCTX = 16
};

/*
 * Offline runs (nfqlua --replay, nfq.testing): how often one packet may be
 * repeated before it counts as a drop (the kernel would loop), and how much
 * time on the packets' clock on_timer gets after the last packet to give the
 * verdicts of packets still held.
 */
enum {
	NFQ_OFFLINE_MAX_REPEATS = 8,
	NFQ_OFFLINE_DRAIN_SECONDS = 60
};

/*
 * pkt:reject(how): the answer to build. The ICMP kinds answer IPv6 packets
 * with their ICMPv6 counterparts. NFQ_REJECT_VERIFY_CSUM, or'ed in, refuses
 * an original whose transport checksum is wrong, as iptables REJECT does.
 * NFQ_REJECT_TO_DESTINATION, or'ed into NFQ_REJECT_TCP_RESET, builds the
 * reset for the packet's destination instead, as if its sender had sent it
 * (pkt:reject("tcp-reset-both") sends both resets).
 */
enum {
	NFQ_REJECT_DEFAULT = 0,			/* a TCP reset for TCP, port unreachable otherwise */
	NFQ_REJECT_TCP_RESET = 1,
	NFQ_REJECT_PORT_UNREACHABLE = 2,	/* ICMP 3/3, ICMPv6 1/4 */
	NFQ_REJECT_HOST_UNREACHABLE = 3,	/* ICMP 3/1, ICMPv6 1/3 (address unreachable) */
	NFQ_REJECT_NET_UNREACHABLE = 4,		/* ICMP 3/0, ICMPv6 1/0 (no route) */
	NFQ_REJECT_ADMIN_PROHIBITED = 5,	/* ICMP 3/13, ICMPv6 1/1 */
	NFQ_REJECT_HOST_PROHIBITED = 6,		/* ICMP 3/10, ICMPv6 1/1 */
	NFQ_REJECT_NET_PROHIBITED = 7,		/* ICMP 3/9, ICMPv6 1/1 */
	NFQ_REJECT_KIND_MASK = 0xff,
	NFQ_REJECT_VERIFY_CSUM = 0x100,
	NFQ_REJECT_TO_DESTINATION = 0x200,
	NFQ_REJECT_MAX_LEN = 1280		/* the longest answer: an ICMPv6 error */
};

/* Why nfq_reject_build() built no answer (nfq_reject_strerror() says it). */
enum {
	NFQ_REJECT_EMALFORMED = -1,	/* not a whole IPv4/IPv6 header, or lengths that lie */
	NFQ_REJECT_ENOTTCP = -2,	/* a TCP reset asked for a packet that is not TCP */
	NFQ_REJECT_ESHORT = -3,		/* the copy ends before the transport header does */
	NFQ_REJECT_EFRAGMENT = -4,	/* a fragment other than the first */
	NFQ_REJECT_ERST = -5,		/* a TCP reset */
	NFQ_REJECT_EICMPERROR = -6,	/* an ICMP or ICMPv6 error */
	NFQ_REJECT_EADDRESS = -7,	/* from or to a broadcast, multicast or unspecified address */
	NFQ_REJECT_ECHECKSUM = -8,	/* its transport checksum is wrong */
	NFQ_REJECT_EROOM = -9,		/* the output buffer is too small */
	NFQ_REJECT_EKIND = -10		/* an unknown kind of answer, or TO_DESTINATION without TCP_RESET */
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
	uint32_t ct_id;
	uint32_t ct_mark;
	uint32_t ct_status;		/* IPS_* bits */
	uint32_t ct_info;		/* enum ip_conntrack_info */
	uint32_t skbinfo;		/* NFQA_SKB_* bits */
	uint32_t priority;
	uint16_t vlan_proto;
	uint16_t vlan_tci;
	uint16_t l2hdr_len;
	uint16_t secctx_len;
	const uint8_t *l2hdr;		/* link-layer header, where the kernel gives one */
	const char *secctx;		/* security context, not NUL-terminated */
	uint32_t new_connmark;
	uint32_t new_mark;
	uint32_t new_payload_len;
	uint8_t *new_payload;		/* malloc'd by set_payload, freed with the packet */
	uint8_t *own_payload;		/* malloc'd copy of a retained packet's payload, L2 header and secctx */
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
	uint64_t script_timeouts;	/* calls cut short by the watchdog */
	uint64_t sent;			/* packets nfq.send and pkt:reject gave the kernel */
	uint64_t send_errors;		/* packets the kernel refused to send */
	uint64_t reloads;		/* scripts swapped in by a reload */
	uint64_t reload_failures;	/* reloads refused, old script kept */
};

/* The kernel's own counters for a queue (NFQ_KERNEL_STATS_PATH). */
struct nfq_kernel_stats {
	int64_t waiting;		/* packets queued now */
	int64_t queue_dropped;		/* dropped because the queue was full */
	int64_t user_dropped;		/* dropped because our socket was full */
};

struct nfq_queue_priv;
struct nfq_sender;

struct nfq_queue {
	struct nfq_packet *pkts;	/* the current batch */
	uint32_t count;			/* packets in the batch */
	uint32_t pos;			/* next packet to dispatch */
	uint32_t fallback;		/* verdict for packets left without one */
	int32_t fd;
	int32_t queue_num;		/* -1 while unbound */
	uint32_t flags;			/* NFQ_FLAG_* given to bind */
	uint32_t range;			/* bytes copied per packet: the range asked for, at most
					 * NFQ_MAX_COPY_RANGE; 0 in COPY_META */
	uint32_t in_dispatch;		/* verdicts wait for nfq_queue_flush() */
	struct nfq_stats stats;
	char errmsg[256];		/* why the last call failed */
	struct nfq_queue_priv *priv;
	struct nfq_sender *sender;	/* NULL: sending is off (nfq_queue_set_sender) */
	uint32_t bypass_mark;		/* pkt:bypass() sets the bits of bypass_mask to these */
	uint32_t bypass_mask;		/* (NFQ_BYPASS_MARK for both when the queue is opened) */
};

/* Protocol headers as they lie in the payload; multi-byte fields are big-endian. */
struct nfq_ipv4_hdr {
	uint8_t version_ihl;
	uint8_t tos;
	uint16_t total_length_be;
	uint16_t id_be;
	uint16_t frag_be;
	uint8_t ttl;
	uint8_t protocol;
	uint16_t checksum_be;
	uint8_t src[4];
	uint8_t dst[4];
} __attribute__((packed));

struct nfq_ipv6_hdr {
	uint32_t vtc_flow_be;
	uint16_t payload_length_be;
	uint8_t next_header;
	uint8_t hop_limit;
	uint8_t src[16];
	uint8_t dst[16];
} __attribute__((packed));

struct nfq_udp_hdr {
	uint16_t sport_be;
	uint16_t dport_be;
	uint16_t length_be;
	uint16_t checksum_be;
} __attribute__((packed));

struct nfq_tcp_hdr {
	uint16_t sport_be;
	uint16_t dport_be;
	uint32_t seq_be;
	uint32_t ack_be;
	uint8_t data_offset;		/* header length in 32-bit words, high nibble */
	uint8_t flags;			/* FIN 1, SYN 2, RST 4, PSH 8, ACK 16, URG 32 */
	uint16_t window_be;
	uint16_t checksum_be;
	uint16_t urgent_be;
} __attribute__((packed));

struct nfq_icmp_hdr {
	uint8_t type;
	uint8_t code;
	uint16_t checksum_be;
	uint32_t rest_be;
} __attribute__((packed));

/*
 * The Lua view of a packet in a batch slot is a struct nfq_lua_packet_ref *
 * that points nowhere: its value numbers the slot array (lua/nfq.lua keeps a
 * list), the slot and the generation it was made for. An immutable value,
 * unlike a struct, is one the JIT never has to allocate, even when the
 * script calls C between two uses of the packet.
 */
struct nfq_lua_packet_ref;

/* The Lua view of a packet handed over by a reload: a pointer plus the generation it was made for. */
struct nfq_lua_packet {
	struct nfq_packet *p;
	uint32_t gen;
	const uint32_t id;
	const uint32_t mark;
	const uint16_t hw_protocol;
	const uint8_t hook;
};

/* What an offline queue records, in the order of the calls. */
enum {
	NFQ_RECORD_VERDICT = 0,		/* a verdict, instead of sending it */
	NFQ_RECORD_SENT = 1		/* a packet nfq.send gave it: payload, mark */
};

/* A verdict given on an offline queue (replay, tests), or a packet it sent. */
struct nfq_verdict_record {
	uint32_t kind;			/* NFQ_RECORD_* */
	uint32_t id;
	uint32_t verdict;
	uint32_t flags;			/* the packet's NFQ_PF_* when it got the verdict */
	uint32_t mark;			/* with NFQ_PF_MARK_SET; a sent packet's mark */
	uint32_t connmark;		/* with NFQ_PF_CONNMARK_SET */
	uint32_t payload_len;
	uint8_t *payload;		/* with NFQ_PF_PAYLOAD_SET, or the packet sent; owned by the queue */
};

/*
 * Packet buffers (nfq.buffer, pkt:copy, nfq.tcp_split, nfq.ip_fragment): a
 * mutable IP packet of up to NFQ_BUFFER_SIZE bytes, from a pool that each Lua
 * state owns. A buffer is lent to the script until the pool is recycled (at
 * the end of each packet callback), kept when the script retains it (until
 * it releases it), or free. The pool never frees a buffer while it lives, so
 * a stale Lua handle can still read its gen; the split and fragment builders
 * make at most NFQ_BUILD_MAX_PIECES pieces.
 */
enum {
	NFQ_BUFFER_SIZE = 65535,
	NFQ_BUFFER_MAX_IN_USE = 4096,
	NFQ_BUILD_MAX_PIECES = 64
};

enum {
	NFQ_BUF_FREE = 0,
	NFQ_BUF_LENT = 1,
	NFQ_BUF_KEPT = 2
};

/* Flags of nfq_build_tcp_split() and nfq_build_ip_fragment(). */
enum {
	NFQ_BUILD_REVERSE = 1		/* the pieces come out last first */
};

struct nfq_buffer_pool;

struct nfq_buffer {
	uint32_t len;			/* bytes of data in use */
	uint32_t gen;			/* bumped when it goes back to the pool: stale Lua handles notice */
	uint32_t state;			/* NFQ_BUF_* */
	uint32_t index;			/* in its pool's all[] */
	struct nfq_buffer_pool *pool;
	struct nfq_buffer *prev;	/* the pool's lent list (free list: next only) */
	struct nfq_buffer *next;
	uint8_t data[65535];		/* NFQ_BUFFER_SIZE */
};

struct nfq_buffer_pool {
	struct nfq_buffer *free_list;
	struct nfq_buffer *lent_list;	/* NULL when nothing is to recycle */
	uint32_t in_use;		/* lent and kept */
	uint32_t allocated;		/* buffers in all[] */
	uint32_t closed;		/* its owner is gone: kept buffers are freed on release */
	uint32_t reserved;
	struct nfq_buffer *all[4096];	/* NFQ_BUFFER_MAX_IN_USE: every buffer it made, by index */
};

/*
 * The Lua handle of a buffer is a struct nfq_lua_buffer * that points
 * nowhere: its value is the buffer's index in its pool times 2^32 plus the
 * gen it was lent at. An immutable value, unlike a struct, is one the JIT
 * never has to allocate, even when the script calls C between two uses.
 */
struct nfq_lua_buffer;

struct nfq_buffer_pool *nfq_buffer_pool_new(void);
/* Free the pool's free and lent buffers; kept ones go when released. */
void nfq_buffer_pool_close(struct nfq_buffer_pool *pool);
/*
 * n lent buffers of length 0 into out; -1 with errno ENOBUFS when that would
 * put more than NFQ_BUFFER_MAX_IN_USE in use, ENOMEM when out of memory.
 */
int nfq_buffer_get(struct nfq_buffer_pool *pool, uint32_t n, struct nfq_buffer **out);
/* A lent buffer becomes kept: recycling leaves it to the script. */
void nfq_buffer_keep(struct nfq_buffer *b);
/* Back to the pool now, lent or kept. */
void nfq_buffer_release(struct nfq_buffer *b);
void nfq_buffer_release_many(struct nfq_buffer *const *b, uint32_t n);
/* Every lent buffer back to the pool. */
void nfq_buffer_recycle(struct nfq_buffer_pool *pool);
/*
 * The TCP segment of the IPv4/IPv6 packet in[0..len) cut at the ncuts payload
 * offsets cuts (increasing), each piece after the first starting overlap
 * bytes early, into out[0..ncuts]; the pieces' lengths, sequence numbers,
 * flags, IPv4 ids and checksums set. The number of pieces, or -1 with why in
 * err (errlen bytes, NUL-terminated); nothing is written past a piece's data.
 */
int nfq_build_tcp_split(const uint8_t *in, uint32_t len, const uint32_t *cuts, uint32_t ncuts,
			uint32_t overlap, uint32_t flags, struct nfq_buffer *const *out,
			char *err, uint32_t errlen);
/*
 * The IPv4 or IPv6 packet in[0..len) as fragments cut at the ncuts offsets
 * (multiples of 8, increasing) of its fragmentable part, into out[0..ncuts].
 * IPv4 keeps its id; IPv6 gets a Fragment header with identification id6.
 */
int nfq_build_ip_fragment(const uint8_t *in, uint32_t len, const uint32_t *cuts, uint32_t ncuts,
			  uint32_t id6, uint32_t flags, struct nfq_buffer *const *out,
			  char *err, uint32_t errlen);
/* A new identification for an IPv6 Fragment header: different on each call. */
uint32_t nfq_build_fragment_id(void);

struct nfq_queue *nfq_queue_open(int sockfd);
/* A queue with no kernel behind it: packets are pushed, verdicts recorded. */
struct nfq_queue *nfq_queue_open_offline(uint32_t mode, uint32_t range);
int nfq_queue_offline_push(struct nfq_queue *q, const struct nfq_packet *meta,
			   const uint8_t *payload, uint32_t len);
const struct nfq_verdict_record *nfq_queue_records(const struct nfq_queue *q, uint32_t *count);
void nfq_queue_clear_records(struct nfq_queue *q);
/*
 * The IP packet in a captured frame of pcap link type linktype (Ethernet,
 * Linux cooked v1/v2, raw IP), with its EtherType; the source hardware
 * address goes to meta. NULL if the frame holds no IPv4/IPv6 packet.
 */
const uint8_t *nfq_link_payload(int linktype, const uint8_t *frame, uint32_t caplen,
				uint32_t *iplen, uint16_t *proto, struct nfq_packet *meta);
/* "UDP packet, 31 bytes": what tostring(pkt) says of an IP packet. */
int nfq_describe(const uint8_t *data, uint32_t len, char *buf, uint32_t buflen);
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
/* Where the transport header starts, and its protocol; -1 if none is whole
 * (a later fragment, a cut packet, an IPv4 total length shorter than its header). */
int nfq_transport_offset(const uint8_t *ip, size_t len, uint8_t *protocol);
/* Set IP lengths and every checksum of an IPv4/IPv6 packet after an edit;
 * of a fragment, only the IP header's (its transport fields describe the
 * whole datagram). */
int nfq_fix_checksums(uint8_t *ip, size_t len);
void nfq_packet_finish(struct nfq_packet *p);
int nfq_packet_verdict(struct nfq_packet *p, uint32_t verdict);
int nfq_packet_set_payload(struct nfq_packet *p, const void *data, size_t len);
struct nfq_packet *nfq_packet_retain(struct nfq_packet *p);
void nfq_packet_release(struct nfq_packet *p);
/*
 * Sending whole IP packets (nfq.send, pkt:reject). A sender is a raw IPv4
 * and a raw IPv6 socket with the IP header included (raw != 0; opening them
 * needs CAP_NET_RAW), or none (raw == 0: for an offline queue, which only
 * records what it sends). Sent packets leave with the send mark: mark, or
 * the script's own mark with the bits in mask taken from mark. NULL and
 * errno on failure.
 */
struct nfq_sender *nfq_sender_open(uint32_t mark, uint32_t mask, int raw);
void nfq_sender_close(struct nfq_sender *s);
/* The queue sends through s from now on, and owns it; NULL turns sending off. */
void nfq_queue_set_sender(struct nfq_queue *q, struct nfq_sender *s);
/*
 * Send a whole IPv4 or IPv6 packet through the queue's sender, with mark
 * (when has_mark) under the send mark, and scope as the interface of an
 * IPv6 link-local destination (0: none). Inside a dispatch it waits for the
 * flush and leaves in order with the verdicts; otherwise it leaves at once.
 * 0, or -1 with errno and q->errmsg: EOPNOTSUPP without a sender, EINVAL for
 * a malformed packet, or the kernel's error.
 */
int nfq_queue_send(struct nfq_queue *q, const void *data, size_t len, uint32_t mark, int has_mark,
		   uint32_t scope);
/*
 * Build into out (cap bytes, NFQ_REJECT_MAX_LEN is always enough) the answer
 * iptables REJECT gives the IPv4/IPv6 packet pkt (len bytes captured): how is
 * an NFQ_REJECT_* kind, with NFQ_REJECT_VERIFY_CSUM or NFQ_REJECT_TO_DESTINATION
 * or'ed in. Its length, or
 * a negative NFQ_REJECT_E* code.
 */
int nfq_reject_build(uint8_t *out, size_t cap, const uint8_t *pkt, size_t len, uint32_t how);
/* Why nfq_reject_build() refused, for a code it returned. */
const char *nfq_reject_strerror(int code);
/* The core's version ("0.1.0"): lua/nfq.lua refuses a core of another one. */
const char *nfq_version(void);
/* END CDEF */
#pragma GCC visibility pop

/* Where the kernel lists the queues of the current network namespace. */
#define NFQ_KERNEL_STATS_PATH "/proc/net/netfilter/nfnetlink_queue"

#endif

/*
 * nfq_reject.c: the answers of pkt:reject(), built from the packet's bytes
 * as the kernel's REJECT target builds them (net/ipv4/netfilter/
 * nf_reject_ipv4.c, net/ipv6/netfilter/nf_reject_ipv6.c, and icmp_send()
 * and icmpv6_send(), which those call for ICMP errors):
 *
 * - A TCP reset comes from the original's destination, to its source, with
 *   the ports swapped, no options and no data: its sequence number is the
 *   segment's acknowledgment number when that had ACK; otherwise it is 0
 *   and the reset acknowledges the segment (sequence number plus SYN, FIN
 *   and the data length). TTL or hop limit 64, IPv4 with DF set.
 * - The reset for the destination (NFQ_REJECT_TO_DESTINATION, an IPS's
 *   "reject both") comes from the original's source, to its destination,
 *   ports as they were: its sequence number is the segment's own, the next
 *   byte the destination expects, since the segment never reaches it. With
 *   ACK, it acknowledges what the segment did, as the sender's own abort
 *   (tcp_send_active_reset(): RST and ACK, seq SND.NXT, ack RCV.NXT) would:
 *   a destination in SYN-SENT accepts a reset only with an acceptable ACK
 *   (RFC 793). A segment without ACK (a SYN) gives a bare RST.
 * - An ICMP destination unreachable quotes the original from its IP header
 *   on: as much as fits in 576 bytes (IPv4) or in the IPv6 minimum MTU of
 *   1280 (ICMPv6). Its IPv4 TOS is the original's with the precedence of
 *   network control, as icmp_send() sets it.
 * - No answer to a TCP reset, an ICMP error, a fragment other than the
 *   first, from or to a broadcast, multicast or unspecified address, or
 *   (with NFQ_REJECT_VERIFY_CSUM) to a TCP, UDP, ICMP or ICMPv6 packet whose
 *   checksum is wrong.
 *
 * One difference: the answer's source is always the original destination.
 * On FORWARD, the kernel's ICMP errors come from the router's own address
 * instead; receivers match an ICMP error by the header it quotes, not by
 * its source.
 *
 * Everything here works on byte buffers and is bounds-checked against them;
 * spec/fuzz/fuzz_reject.c fuzzes it.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "nfq_internal.h"

#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMP_ 1
#define IPPROTO_ICMPV6_ 58
#define HOP_LIMIT 64
/* Quoted bytes of the original: icmp_send() fills at most 576 bytes. */
#define QUOTE_V4 (576 - 20 - 8)
/* icmpv6_send(): at most the IPv6 minimum MTU. */
#define QUOTE_V6 (1280 - 40 - 8)
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10
#define IPV4_DF 0x4000
#define IPTOS_TOS_MASK 0x1e
#define IPTOS_PREC_INTERNETCONTROL 0xc0

/* What the answer needs to know about the original. */
struct original {
	const uint8_t *ip;
	int v6;
	size_t avail;		/* bytes of the datagram in the copy */
	size_t datagram;	/* its length by its header */
	size_t l4;		/* where the transport header starts, if found */
	int has_l4;		/* the transport protocol is known */
	uint8_t proto;
	int fragment;		/* a fragment of a larger datagram */
	int later_fragment;	/* one without the transport header */
};

/* The pseudo-header sum of a transport segment of len bytes. */
static uint64_t pseudo_sum(const uint8_t *ip, int v6, uint8_t proto, size_t len)
{
	if (v6)
		return nfq_sum16(ip + 8, 32, 0) + proto + (len >> 16) + (len & 0xffff);
	return nfq_sum16(ip + 12, 8, 0) + proto + len;
}

static int parse_v4(struct original *o, const uint8_t *ip, size_t len)
{
	if (len < 20)
		return -1;
	size_t ihl = (size_t)(ip[0] & 15) * 4;
	size_t total = nfq_get16(ip + 2);
	if (ihl < 20 || ihl > len || total < ihl)
		return -1;
	o->datagram = total;
	o->avail = len < total ? len : total;
	uint16_t frag = nfq_get16(ip + 6);
	o->later_fragment = (frag & 0x1fff) != 0;
	o->fragment = (frag & 0x3fff) != 0;
	o->proto = ip[9];
	o->l4 = ihl;
	o->has_l4 = !o->later_fragment;
	return 0;
}

/* The transport header past the extension headers, as ipv6_skip_exthdr() finds it. */
static int parse_v6(struct original *o, const uint8_t *ip, size_t len)
{
	if (len < 40)
		return -1;
	o->v6 = 1;
	o->datagram = 40 + (size_t)nfq_get16(ip + 4);
	o->avail = len < o->datagram ? len : o->datagram;
	uint8_t next = ip[6];
	size_t off = 40;
	for (;;) {
		size_t hlen;
		if (next == 0 || next == 43 || next == 60 || next == 51) {
			if (off + 2 > o->avail)
				return 0;	/* the copy ends inside the extension headers */
			hlen = next == 51 ? ((size_t)ip[off + 1] + 2) * 4 : ((size_t)ip[off + 1] + 1) * 8;
		} else if (next == 44) {
			if (off + 8 > o->avail)
				return 0;
			uint16_t frag = nfq_get16(ip + off + 2);
			o->fragment = (frag & 0xfff9) != 0;
			if (frag & 0xfff8) {
				o->later_fragment = 1;
				return 0;
			}
			hlen = 8;
		} else {
			break;
		}
		next = ip[off];
		off += hlen;
	}
	o->proto = next;
	o->l4 = off;
	o->has_l4 = off <= o->avail;
	return 0;
}

/* An address nobody answers from or to: unspecified, broadcast,
 * multicast (for IPv4 also 0.0.0.0/8 and the reserved 240.0.0.0/4). */
static int unanswerable(const uint8_t *addr, int v6)
{
	if (v6) {
		static const uint8_t unspecified[16];
		return addr[0] == 0xff || memcmp(addr, unspecified, 16) == 0;
	}
	return addr[0] == 0 || addr[0] >= 224;
}

/* Transport checksums that cover the whole datagram, as REJECT verifies
 * them: 1 good or not checked, 0 wrong. */
static int checksum_ok(const struct original *o)
{
	if (!o->has_l4 || o->fragment || o->avail < o->datagram)
		return 1;
	const uint8_t *l4 = o->ip + o->l4;
	size_t len = o->datagram - o->l4;
	uint64_t acc;
	switch (o->proto) {
	case IPPROTO_TCP_:
		acc = pseudo_sum(o->ip, o->v6, o->proto, len);
		break;
	case IPPROTO_UDP_:
		if (len >= 8 && nfq_get16(l4 + 6) == 0)
			return 1;	/* none given */
		acc = pseudo_sum(o->ip, o->v6, o->proto, len);
		break;
	case IPPROTO_ICMP_:
		if (o->v6)
			return 1;
		acc = 0;
		break;
	case IPPROTO_ICMPV6_:
		if (!o->v6)
			return 1;
		acc = pseudo_sum(o->ip, 1, o->proto, len);
		break;
	default:
		return 1;
	}
	return nfq_fold(nfq_sum16(l4, len, acc)) == 0;
}

/* The IP header of the answer, addresses swapped (kept as they were for
 * the destination's reset); its length fields later. */
static size_t put_ip(uint8_t *out, const struct original *o, uint8_t proto, uint8_t tos, uint16_t frag,
		     int to_destination)
{
	const uint8_t *ip = o->ip;
	if (o->v6) {
		memset(out, 0, 40);
		out[0] = 0x60;
		out[6] = proto;
		out[7] = HOP_LIMIT;
		memcpy(out + 8, ip + (to_destination ? 8 : 24), 16);
		memcpy(out + 24, ip + (to_destination ? 24 : 8), 16);
		return 40;
	}
	memset(out, 0, 20);
	out[0] = 0x45;
	out[1] = tos;
	nfq_put16(out + 6, frag);
	out[8] = HOP_LIMIT;
	out[9] = proto;
	memcpy(out + 12, ip + (to_destination ? 12 : 16), 4);
	memcpy(out + 16, ip + (to_destination ? 16 : 12), 4);
	return 20;
}

/* Set the answer's IP length fields, and its IPv4 header checksum. */
static void finish_ip(uint8_t *out, int v6, size_t total)
{
	if (v6) {
		nfq_put16(out + 4, (uint32_t)(total - 40));
		return;
	}
	nfq_put16(out + 2, (uint32_t)total);
	nfq_put16(out + 10, nfq_fold(nfq_sum16(out, 20, 0)));
}

static int tcp_reset(uint8_t *out, size_t cap, const struct original *o, int to_destination)
{
	const uint8_t *th = o->ip + o->l4;
	if (o->l4 + 20 > o->avail)
		return NFQ_REJECT_ESHORT;
	size_t doff = (size_t)(th[12] >> 4) * 4;
	if (doff < 20 || o->l4 + doff > o->datagram)
		return NFQ_REJECT_EMALFORMED;
	uint8_t flags = th[13];
	if (flags & TCP_RST)
		return NFQ_REJECT_ERST;
	size_t hlen = o->v6 ? 40 : 20;
	if (cap < hlen + 20)
		return NFQ_REJECT_EROOM;
	put_ip(out, o, IPPROTO_TCP_, 0, IPV4_DF, to_destination);
	uint8_t *t = out + hlen;
	memset(t, 0, 20);
	t[12] = 5 << 4;
	if (to_destination) {
		memcpy(t, th, 8);	/* ports as they were, and the segment's sequence number */
		if (flags & TCP_ACK)
			memcpy(t + 8, th + 8, 4);
		t[13] = (uint8_t)(TCP_RST | (flags & TCP_ACK));
	} else {
		memcpy(t, th + 2, 2);
		memcpy(t + 2, th, 2);
		if (flags & TCP_ACK) {
			memcpy(t + 4, th + 8, 4);
			t[13] = TCP_RST;
		} else {
			size_t data = o->datagram - o->l4 - doff;
			uint32_t ack = nfq_get32(th + 4) + !!(flags & TCP_SYN) + !!(flags & TCP_FIN) + (uint32_t)data;
			nfq_put32(t + 8, ack);
			t[13] = TCP_RST | TCP_ACK;
		}
	}
	finish_ip(out, o->v6, hlen + 20);
	nfq_put16(t + 16, nfq_fold(nfq_sum16(t, 20, pseudo_sum(out, o->v6, IPPROTO_TCP_, 20))));
	return (int)(hlen + 20);
}

/* ICMP 3 and ICMPv6 1 codes per kind, from NFQ_REJECT_PORT_UNREACHABLE on. */
static const uint8_t icmp_codes[][2] = {
	{ 3, 4 },	/* port unreachable */
	{ 1, 3 },	/* host unreachable; ICMPv6 address unreachable */
	{ 0, 0 },	/* net unreachable; ICMPv6 no route */
	{ 13, 1 },	/* communication administratively prohibited */
	{ 10, 1 },	/* host prohibited */
	{ 9, 1 },	/* net prohibited */
};

/* An ICMP error never answers another (icmp_send(), is_ineligible()). */
static int is_icmp_error(const struct original *o)
{
	uint8_t type = o->ip[o->l4];
	if (o->v6)
		return o->proto == IPPROTO_ICMPV6_ && !(type & 0x80);
	/* Errors, and types the kernel does not know. */
	return o->proto == IPPROTO_ICMP_ &&
		(type > 18 || type == 3 || type == 4 || type == 5 || type == 11 || type == 12);
}

static int unreachable(uint8_t *out, size_t cap, const struct original *o, uint32_t kind)
{
	if ((o->proto == IPPROTO_ICMP_ || o->proto == IPPROTO_ICMPV6_) && o->has_l4) {
		if (o->l4 + 1 > o->avail)
			return NFQ_REJECT_ESHORT;
		if (is_icmp_error(o))
			return NFQ_REJECT_EICMPERROR;
	} else if (o->v6 && !o->has_l4) {
		return NFQ_REJECT_ESHORT;
	}
	size_t hlen = o->v6 ? 40 : 20;
	size_t quote = o->avail < (o->v6 ? QUOTE_V6 : QUOTE_V4) ? o->avail : (o->v6 ? QUOTE_V6 : QUOTE_V4);
	size_t total = hlen + 8 + quote;
	if (cap < total)
		return NFQ_REJECT_EROOM;
	uint8_t tos = (uint8_t)((o->ip[1] & IPTOS_TOS_MASK) | IPTOS_PREC_INTERNETCONTROL);
	put_ip(out, o, o->v6 ? IPPROTO_ICMPV6_ : IPPROTO_ICMP_, tos, 0, 0);
	uint8_t *icmp = out + hlen;
	memset(icmp, 0, 8);
	icmp[0] = o->v6 ? 1 : 3;
	icmp[1] = icmp_codes[kind - NFQ_REJECT_PORT_UNREACHABLE][o->v6];
	memcpy(icmp + 8, o->ip, quote);
	finish_ip(out, o->v6, total);
	uint64_t acc = o->v6 ? pseudo_sum(out, 1, IPPROTO_ICMPV6_, 8 + quote) : 0;
	nfq_put16(icmp + 2, nfq_fold(nfq_sum16(icmp, 8 + quote, acc)));
	return (int)total;
}

int nfq_reject_build(uint8_t *out, size_t cap, const uint8_t *pkt, size_t len, uint32_t how)
{
	uint32_t kind = how & NFQ_REJECT_KIND_MASK;
	int to_destination = (how & NFQ_REJECT_TO_DESTINATION) != 0;
	if (kind > NFQ_REJECT_NET_PROHIBITED || (to_destination && kind != NFQ_REJECT_TCP_RESET))
		return NFQ_REJECT_EKIND;
	struct original o;
	memset(&o, 0, sizeof o);
	o.ip = pkt;
	if (!pkt || len == 0 ||
	    (pkt[0] >> 4 == 4 ? parse_v4(&o, pkt, len) : pkt[0] >> 4 == 6 ? parse_v6(&o, pkt, len) : -1) < 0)
		return NFQ_REJECT_EMALFORMED;
	if (unanswerable(pkt + (o.v6 ? 8 : 12), o.v6) || unanswerable(pkt + (o.v6 ? 24 : 16), o.v6))
		return NFQ_REJECT_EADDRESS;
	if (o.later_fragment)
		return NFQ_REJECT_EFRAGMENT;
	if (kind == NFQ_REJECT_DEFAULT)
		kind = o.has_l4 && o.proto == IPPROTO_TCP_ ? NFQ_REJECT_TCP_RESET : NFQ_REJECT_PORT_UNREACHABLE;
	if (kind == NFQ_REJECT_TCP_RESET && !o.has_l4)
		return NFQ_REJECT_ESHORT;
	if (kind == NFQ_REJECT_TCP_RESET && o.proto != IPPROTO_TCP_)
		return NFQ_REJECT_ENOTTCP;
	if ((how & NFQ_REJECT_VERIFY_CSUM) && !checksum_ok(&o))
		return NFQ_REJECT_ECHECKSUM;
	if (kind == NFQ_REJECT_TCP_RESET)
		return tcp_reset(out, cap, &o, to_destination);
	return unreachable(out, cap, &o, kind);
}

const char *nfq_reject_strerror(int code)
{
	switch (code) {
	case NFQ_REJECT_EMALFORMED:
		return "the packet is not a whole IPv4 or IPv6 packet (a header, or lengths that lie)";
	case NFQ_REJECT_ENOTTCP:
		return "a tcp-reset answers TCP segments only";
	case NFQ_REJECT_ESHORT:
		return "the copy ends before the transport header does (bind with a larger range)";
	case NFQ_REJECT_EFRAGMENT:
		return "no answer to a fragment other than the first";
	case NFQ_REJECT_ERST:
		return "no answer to a TCP reset";
	case NFQ_REJECT_EICMPERROR:
		return "no answer to an ICMP error";
	case NFQ_REJECT_EADDRESS:
		return "no answer from or to a broadcast, multicast or unspecified address";
	case NFQ_REJECT_ECHECKSUM:
		return "no answer to a packet whose checksum is wrong";
	case NFQ_REJECT_EROOM:
		return "the answer does not fit in the buffer";
	case NFQ_REJECT_EKIND:
		return "unknown kind of answer (a reset for the destination goes with a tcp-reset only)";
	}
	return "unknown error";
}

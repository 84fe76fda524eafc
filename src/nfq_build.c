/*
 * nfq_build.c: packets made from a packet: one TCP segment split into several
 * (nfq_build_tcp_split), one IP packet cut into fragments
 * (nfq_build_ip_fragment). The input is untrusted: its version, header
 * lengths and total length are checked against its length before anything
 * past them is read, and each piece's size against NFQ_BUFFER_SIZE before it
 * is written.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "nfq_internal.h"

enum {
	PROTO_HOPOPTS = 0, PROTO_TCP = 6, PROTO_ROUTING = 43, PROTO_FRAGMENT = 44, PROTO_DSTOPTS = 60,
};
enum { TCP_FIN = 1, TCP_SYN = 2, TCP_PSH = 8, TCP_URG = 32, TCP_CWR = 128 };
enum { IP4_DF = 0x4000, IP4_MF = 0x2000, IP4_OFFSET = 0x1fff };
enum { IP4_OPT_END = 0, IP4_OPT_NOP = 1, IP4_OPT_COPIED = 0x80 };
/* IPv6 extension headers followed before giving up. */
#define MAX_EXT_HEADERS 8
/* The largest fragment offset IPv4's 13-bit field holds, in bytes. */
#define IP4_MAX_OFFSET (IP4_OFFSET * 8)

__attribute__((format(printf, 3, 4)))
static int fail(char *err, uint32_t errlen, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	errno = EINVAL;
	return -1;
}

static void set_ipv4_checksum(uint8_t *h, uint32_t ihl)
{
	nfq_put16(h + 10, 0);
	nfq_put16(h + 10, nfq_fold(nfq_sum16(h, ihl, 0)));
}

/*
 * The IP version of in[0..len), once its header lengths and total length
 * agree with len; -1 and why otherwise.
 */
static int check_ip(const uint8_t *in, uint32_t len, char *err, uint32_t errlen)
{
	if (!in || len == 0)
		return fail(err, errlen, "the packet is empty");
	if (len > NFQ_BUFFER_SIZE)
		return fail(err, errlen, "the packet has %u bytes, more than the %d an IP packet can have",
			    len, NFQ_BUFFER_SIZE);
	unsigned version = in[0] >> 4;
	if (version == 4) {
		if (len < 20)
			return fail(err, errlen, "%u bytes are too short for an IPv4 header (20)", len);
		uint32_t ihl = (uint32_t)(in[0] & 15) * 4;
		if (ihl < 20)
			return fail(err, errlen, "the IPv4 header length is %u, less than 20", ihl);
		if (ihl > len)
			return fail(err, errlen, "the IPv4 header length (%u) is more than the packet's %u bytes", ihl, len);
		if (nfq_get16(in + 2) != len)
			return fail(err, errlen, "the IPv4 total length (%u) does not match the packet's %u bytes "
				    "(b:fix_checksums() sets it)", nfq_get16(in + 2), len);
		return 4;
	}
	if (version == 6) {
		if (len < 40)
			return fail(err, errlen, "%u bytes are too short for an IPv6 header (40)", len);
		if (nfq_get16(in + 4) + 40 != len)
			return fail(err, errlen, "the IPv6 payload length (%u) does not match the %u bytes after the "
				    "40-byte header (b:fix_checksums() sets it)", nfq_get16(in + 4), len - 40);
		return 6;
	}
	return fail(err, errlen, "not an IPv4 or IPv6 packet (version %u)", version);
}

/*
 * Where the next IPv6 extension header ends, from its start at off (which
 * the caller bounds by len); -1 if it runs past len.
 */
static int ext_header_end(const uint8_t *in, uint32_t len, uint32_t off, char *err, uint32_t errlen)
{
	if (len - off < 8)
		return fail(err, errlen, "an IPv6 extension header at byte %u runs past the end of the packet", off);
	uint32_t ext_len = ((uint32_t)in[off + 1] + 1) * 8;
	if (ext_len > len - off)
		return fail(err, errlen, "an IPv6 extension header at byte %u runs past the end of the packet", off);
	return (int)(off + ext_len);
}

static int is_walked_ext(unsigned next)
{
	return next == PROTO_HOPOPTS || next == PROTO_ROUTING || next == PROTO_DSTOPTS;
}

/*
 * The offsets cut at: at least one, increasing, inside (0, total), multiples
 * of align, and no piece overlapping further back than the cut before.
 */
static int check_cuts(const uint32_t *cuts, uint32_t ncuts, uint32_t total, uint32_t align,
		      uint32_t overlap, const char *what, char *err, uint32_t errlen)
{
	if (ncuts == 0)
		return fail(err, errlen, "give at least one offset to cut at");
	if (ncuts >= NFQ_BUILD_MAX_PIECES)
		return fail(err, errlen, "%u offsets make more than %d pieces", ncuts, NFQ_BUILD_MAX_PIECES);
	if (total < 2)
		return fail(err, errlen, "the %s has %u bytes: too few to cut", what, total);
	for (uint32_t i = 0; i < ncuts; i++) {
		uint32_t cut = cuts[i], before = i ? cuts[i - 1] : 0;
		if (cut == 0 || cut >= total)
			return fail(err, errlen, "offset %u is out of range: the %s has %u bytes, so an offset "
				    "must be from 1 to %u", cut, what, total, total - 1);
		if (cut % align)
			return fail(err, errlen, "offset %u is not a multiple of %u", cut, align);
		if (i && cut <= before)
			return fail(err, errlen, "offsets must increase, but %u comes after %u", cut, before);
		if (overlap > cut - before)
			return fail(err, errlen, "overlap %u is more than the %u bytes from offset %u to offset %u",
				    overlap, cut - before, before, cut);
	}
	return 0;
}

/* Piece i of ncuts + 1, in the order of the data: where it starts and ends. */
static void piece_range(const uint32_t *cuts, uint32_t ncuts, uint32_t total, uint32_t overlap,
			uint32_t i, uint32_t *start, uint32_t *end)
{
	*start = i ? cuts[i - 1] - overlap : 0;
	*end = i < ncuts ? cuts[i] : total;
}

static struct nfq_buffer *piece_out(struct nfq_buffer *const *out, uint32_t ncuts, uint32_t flags, uint32_t i)
{
	return out[flags & NFQ_BUILD_REVERSE ? ncuts - i : i];
}

/* The extension headers of a checked IPv6 packet, walked up to what they carry. */
struct ipv6_walk {
	unsigned next;		/* the protocol after them */
	uint32_t off;		/* where it starts */
	/* The unfragmentable part: the header, hop-by-hop options and the
	 * extension headers up to the last routing header; its end, and the
	 * next-header byte that names what follows it. */
	uint32_t unfrag_end;
	uint32_t next_at;
};

static int ipv6_walk(const uint8_t *in, uint32_t len, struct ipv6_walk *w, char *err, uint32_t errlen)
{
	*w = (struct ipv6_walk){ .next = in[6], .off = 40, .unfrag_end = 40, .next_at = 6 };
	for (int i = 0; i < MAX_EXT_HEADERS && is_walked_ext(w->next); i++) {
		int end = ext_header_end(in, len, w->off, err, errlen);
		if (end < 0)
			return -1;
		if (w->next == PROTO_HOPOPTS || w->next == PROTO_ROUTING) {
			w->unfrag_end = (uint32_t)end;
			w->next_at = w->off;
		}
		w->next = in[w->off];
		w->off = (uint32_t)end;
	}
	if (is_walked_ext(w->next))
		return fail(err, errlen, "the packet has more than %d IPv6 extension headers", MAX_EXT_HEADERS);
	return 0;
}

/* Where the TCP header of a checked IPv6 packet starts; -1 if it has none. */
static int ipv6_tcp_offset(const uint8_t *in, uint32_t len, char *err, uint32_t errlen)
{
	struct ipv6_walk w;
	if (ipv6_walk(in, len, &w, err, errlen) < 0)
		return -1;
	if (w.next == PROTO_FRAGMENT)
		return fail(err, errlen, "the packet is an IPv6 fragment, not a whole TCP segment");
	if (w.next != PROTO_TCP)
		return fail(err, errlen, "not a TCP packet (IPv6 next header %u)", w.next);
	return (int)w.off;
}

int nfq_build_tcp_split(const uint8_t *in, uint32_t len, const uint32_t *cuts, uint32_t ncuts,
			uint32_t overlap, uint32_t flags, struct nfq_buffer *const *out,
			char *err, uint32_t errlen)
{
	int version = check_ip(in, len, err, errlen);
	if (version < 0)
		return -1;
	uint32_t l4;
	if (version == 4) {
		if (nfq_get16(in + 6) & (IP4_MF | IP4_OFFSET))
			return fail(err, errlen, "the packet is an IPv4 fragment, not a whole TCP segment");
		if (in[9] != PROTO_TCP)
			return fail(err, errlen, "not a TCP packet (IPv4 protocol %u)", in[9]);
		l4 = (uint32_t)(in[0] & 15) * 4;
	} else {
		int off = ipv6_tcp_offset(in, len, err, errlen);
		if (off < 0)
			return -1;
		l4 = (uint32_t)off;
	}
	if (len - l4 < 20)
		return fail(err, errlen, "the TCP header is cut short: %u bytes, less than 20", len - l4);
	uint32_t doff = (uint32_t)(in[l4 + 12] >> 4) * 4;
	if (doff < 20)
		return fail(err, errlen, "the TCP header length is %u, less than 20", doff);
	if (doff > len - l4)
		return fail(err, errlen, "the TCP header length (%u) is more than the %u bytes after the IP header",
			    doff, len - l4);
	uint32_t hdr = l4 + doff, payload = len - hdr;
	if (check_cuts(cuts, ncuts, payload, 1, overlap, "TCP payload", err, errlen) < 0)
		return -1;

	const uint8_t *tcp = in + l4;
	uint32_t seq = nfq_get32(tcp + 4), tflags = tcp[13], urgent = nfq_get16(tcp + 18);
	uint32_t syn = tflags & TCP_SYN ? 1 : 0;
	/* The piece that keeps URG: the first that holds the urgent byte, the
	 * one before the pointer (the last piece if that is past the data). */
	uint32_t urgent_piece = 0;
	int64_t urgent_byte = (int64_t)urgent - 1 - syn;
	for (uint32_t i = ncuts + 1; i-- > 0;) {
		uint32_t start, end;
		piece_range(cuts, ncuts, payload, overlap, i, &start, &end);
		if (urgent_byte >= start && (urgent_byte < end || i == ncuts))
			urgent_piece = i;
	}
	for (uint32_t i = 0; i <= ncuts; i++) {
		uint32_t start, end;
		piece_range(cuts, ncuts, payload, overlap, i, &start, &end);
		struct nfq_buffer *b = piece_out(out, ncuts, flags, i);
		/* Never more than the input's length: the bound of every write. */
		uint32_t size = hdr + (end - start);
		if (size > NFQ_BUFFER_SIZE)
			return fail(err, errlen, "piece %u would have %u bytes", i + 1, size);
		memcpy(b->data, in, hdr);
		memcpy(b->data + hdr, in + hdr + start, end - start);
		b->len = size;
		uint8_t *t = b->data + l4;
		/* Data after a SYN starts one sequence number later. */
		uint32_t delta = i ? syn + start : 0;
		uint32_t f = tflags;
		if (i > 0)
			f &= ~(uint32_t)(TCP_SYN | TCP_CWR);
		if (i < ncuts)
			f &= ~(uint32_t)(TCP_FIN | TCP_PSH);
		if (f & TCP_URG) {
			if (i == urgent_piece) {
				nfq_put16(t + 18, urgent - delta);
			} else {
				f &= ~(uint32_t)TCP_URG;
				nfq_put16(t + 18, 0);
			}
		}
		nfq_put32(t + 4, seq + delta);
		t[13] = (uint8_t)f;
		if (version == 4)
			nfq_put16(b->data + 4, nfq_get16(in + 4) + i);
		nfq_fix_checksums(b->data, size);
	}
	return (int)ncuts + 1;
}

/*
 * IPv4 options are a list of END, NOP and (type, length, data); a later
 * fragment carries only those whose type has the copied bit, so the others
 * become NOPs there (as the kernel's ip_options_fragment() does).
 */
static int check_ipv4_options(const uint8_t *h, uint32_t ihl, char *err, uint32_t errlen)
{
	for (uint32_t o = 20; o < ihl;) {
		if (h[o] == IP4_OPT_END)
			break;
		if (h[o] == IP4_OPT_NOP) {
			o++;
			continue;
		}
		if (ihl - o < 2 || h[o + 1] < 2 || h[o + 1] > ihl - o)
			return fail(err, errlen, "the IPv4 option at byte %u is malformed (its length runs past "
				    "the header)", o);
		o += h[o + 1];
	}
	return 0;
}

static void blank_uncopied_options(uint8_t *h, uint32_t ihl)
{
	for (uint32_t o = 20; o < ihl;) {
		if (h[o] == IP4_OPT_END)
			break;
		if (h[o] == IP4_OPT_NOP) {
			o++;
			continue;
		}
		uint32_t opt_len = h[o + 1];
		if (!(h[o] & IP4_OPT_COPIED))
			memset(h + o, IP4_OPT_NOP, opt_len);
		o += opt_len;
	}
}

static int fragment_ipv4(const uint8_t *in, uint32_t len, const uint32_t *cuts, uint32_t ncuts,
			 uint32_t flags, struct nfq_buffer *const *out, char *err, uint32_t errlen)
{
	uint32_t frag = nfq_get16(in + 6);
	if (frag & IP4_DF)
		return fail(err, errlen, "the packet has DF (don't fragment) set: clear it first "
			    "(b:ip().dont_fragment = false)");
	uint32_t ihl = (uint32_t)(in[0] & 15) * 4, data_len = len - ihl;
	if (check_ipv4_options(in, ihl, err, errlen) < 0 ||
	    check_cuts(cuts, ncuts, data_len, 8, 0, "data after the IPv4 header", err, errlen) < 0)
		return -1;
	/* A fragment can be cut again: its pieces start at its offset, and
	 * the last keeps its MF. */
	uint32_t base = (frag & IP4_OFFSET) * 8, more = frag & IP4_MF;
	if (base + cuts[ncuts - 1] > IP4_MAX_OFFSET)
		return fail(err, errlen, "the fragment at offset %u cut at %u would start past the largest "
			    "IPv4 fragment offset (%d)", base, cuts[ncuts - 1], IP4_MAX_OFFSET);
	for (uint32_t i = 0; i <= ncuts; i++) {
		uint32_t start, end;
		piece_range(cuts, ncuts, data_len, 0, i, &start, &end);
		struct nfq_buffer *b = piece_out(out, ncuts, flags, i);
		uint32_t size = ihl + (end - start);
		if (size > NFQ_BUFFER_SIZE)
			return fail(err, errlen, "fragment %u would have %u bytes", i + 1, size);
		memcpy(b->data, in, ihl);
		if (i > 0)
			blank_uncopied_options(b->data, ihl);
		memcpy(b->data + ihl, in + ihl + start, end - start);
		b->len = size;
		nfq_put16(b->data + 2, size);
		nfq_put16(b->data + 6, (base + start) / 8 | (i < ncuts ? IP4_MF : more));
		set_ipv4_checksum(b->data, ihl);
	}
	return (int)ncuts + 1;
}

static int fragment_ipv6(const uint8_t *in, uint32_t len, const uint32_t *cuts, uint32_t ncuts,
			 uint32_t id, uint32_t flags, struct nfq_buffer *const *out, char *err, uint32_t errlen)
{
	struct ipv6_walk w;
	if (ipv6_walk(in, len, &w, err, errlen) < 0)
		return -1;
	if (w.next == PROTO_FRAGMENT)
		return fail(err, errlen, "the packet already has a Fragment header: it is a fragment");
	uint32_t unfrag = w.unfrag_end, next_at = w.next_at, data_len = len - unfrag;
	if (check_cuts(cuts, ncuts, data_len, 8, 0, "fragmentable part (after the IPv6 header, hop-by-hop "
		       "and routing headers)", err, errlen) < 0)
		return -1;
	for (uint32_t i = 0; i <= ncuts; i++) {
		uint32_t start, end;
		piece_range(cuts, ncuts, data_len, 0, i, &start, &end);
		struct nfq_buffer *b = piece_out(out, ncuts, flags, i);
		/* A piece lacks at least the 8 bytes before its cut, so its
		 * Fragment header keeps it within the input's length. */
		uint32_t size = unfrag + 8 + (end - start);
		if (size > NFQ_BUFFER_SIZE)
			return fail(err, errlen, "fragment %u would have %u bytes", i + 1, size);
		memcpy(b->data, in, unfrag);
		b->data[next_at] = PROTO_FRAGMENT;
		uint8_t *fh = b->data + unfrag;
		fh[0] = in[next_at];
		fh[1] = 0;
		/* The offset in 8-byte units sits in the top 13 bits: start itself. */
		nfq_put16(fh + 2, start | (i < ncuts ? 1 : 0));
		nfq_put32(fh + 4, id);
		memcpy(fh + 8, in + unfrag + start, end - start);
		b->len = size;
		nfq_put16(b->data + 4, size - 40);
	}
	return (int)ncuts + 1;
}

int nfq_build_ip_fragment(const uint8_t *in, uint32_t len, const uint32_t *cuts, uint32_t ncuts,
			  uint32_t id6, uint32_t flags, struct nfq_buffer *const *out,
			  char *err, uint32_t errlen)
{
	int version = check_ip(in, len, err, errlen);
	if (version < 0)
		return -1;
	if (version == 4)
		return fragment_ipv4(in, len, cuts, ncuts, flags, out, err, errlen);
	return fragment_ipv6(in, len, cuts, ncuts, id6, flags, out, err, errlen);
}

uint32_t nfq_build_fragment_id(void)
{
	static uint32_t next;
	static int seeded;
	if (!__atomic_load_n(&seeded, __ATOMIC_ACQUIRE)) {
		uint32_t seed;
		if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed)
			seed = (uint32_t)time(NULL) ^ (uint32_t)getpid() << 16;
		/* Two threads seeding at once both pick a random start: either will do. */
		__atomic_store_n(&next, seed, __ATOMIC_RELAXED);
		__atomic_store_n(&seeded, 1, __ATOMIC_RELEASE);
	}
	return __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
}

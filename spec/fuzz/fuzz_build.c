/*
 * fuzz_build.c: libFuzzer target for the split and fragment builders
 * (nfq_build_tcp_split, nfq_build_ip_fragment). The input is a small header
 * then the packet:
 *   byte 0       bit 0: fragment (else split), bit 1: reverse order
 *   byte 1       number of offsets
 *   bytes 2-3    overlap (split) or the low bits of the IPv6 identification
 *   then         the offsets, 2 bytes each, then the packet
 * Input and pieces are allocated at their exact sizes, so that a read or
 * write past either is caught; a piece that does not put the original back
 * together aborts. Build: make fuzz. Replay without clang: make fuzz-replay.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "nfq_core.h"

#define PIECE_SIZE (offsetof(struct nfq_buffer, data) + NFQ_BUFFER_SIZE)

static uint32_t get16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
static uint32_t get32(const uint8_t *p) { return get16(p) << 16 | get16(p + 2); }

static uint32_t sum16(const uint8_t *p, size_t n, uint32_t acc)
{
	for (size_t i = 0; i + 1 < n; i += 2)
		acc += get16(p + i);
	if (n & 1)
		acc += (uint32_t)p[n - 1] << 8;
	return acc;
}

static void check_sum(uint32_t acc)
{
	while (acc >> 16)
		acc = (acc & 0xffff) + (acc >> 16);
	if (acc != 0xffff)
		abort();
}

static void check(int ok)
{
	if (!ok)
		abort();
}

/* The bytes of a and b agree outside the n ranges [skip[2i], skip[2i+1]). */
static void same_except(const uint8_t *a, const uint8_t *b, uint32_t len, const uint32_t *skip, int n)
{
	for (uint32_t i = 0; i < len; i++) {
		int skipped = 0;
		for (int k = 0; k < n; k++)
			skipped |= i >= skip[2 * k] && i < skip[2 * k + 1];
		check(skipped || a[i] == b[i]);
	}
}

static void range_of(const uint32_t *cuts, uint32_t ncuts, uint32_t total, uint32_t overlap, uint32_t i,
		     uint32_t *start, uint32_t *end)
{
	*start = i ? cuts[i - 1] - overlap : 0;
	*end = i < ncuts ? cuts[i] : total;
}

static void check_split(const uint8_t *in, uint32_t len, const uint32_t *cuts, uint32_t ncuts,
			uint32_t overlap, int reverse, struct nfq_buffer **out)
{
	uint8_t proto;
	int l4 = nfq_transport_offset(in, len, &proto);
	check(l4 > 0 && proto == 6);
	int v4 = in[0] >> 4 == 4;
	uint32_t hdr = (uint32_t)l4 + (uint32_t)(in[l4 + 12] >> 4) * 4, payload = len - hdr;
	uint32_t syn = in[l4 + 13] & 2 ? 1 : 0;
	for (uint32_t i = 0; i <= ncuts; i++) {
		uint32_t start, end;
		range_of(cuts, ncuts, payload, overlap, i, &start, &end);
		const struct nfq_buffer *b = out[reverse ? ncuts - i : i];
		const uint8_t *p = b->data;
		check(b->len == hdr + end - start);
		check(memcmp(p + hdr, in + hdr + start, end - start) == 0);
		uint32_t l = (uint32_t)l4;
		const uint32_t skip4[] = { 2, 6, 10, 12, l + 4, l + 8, l + 13, l + 14, l + 16, l + 20 };
		const uint32_t skip6[] = { 4, 6, l + 4, l + 8, l + 13, l + 14, l + 16, l + 20 };
		same_except(in, p, hdr, v4 ? skip4 : skip6, v4 ? 5 : 4);
		check(get32(p + l + 4) == get32(in + l + 4) + (i ? syn + start : 0));
		uint32_t seg = b->len - l;
		if (v4) {
			check(get16(p + 2) == b->len);
			check(get16(p + 4) == ((get16(in + 4) + i) & 0xffff));
			check_sum(sum16(p, l, 0));
			check_sum(sum16(p + l, seg, sum16(p + 12, 8, 0) + 6 + seg));
		} else {
			check(get16(p + 4) == b->len - 40);
			check_sum(sum16(p + l, seg, sum16(p + 8, 32, 0) + 6 + seg));
		}
		uint8_t f = p[l + 13], orig = in[l + 13];
		check(!(f & 2) || i == 0);
		check(!(f & 9) || i == ncuts);
		check((f & ~0xab) == (orig & ~0xab));
	}
}

static void check_fragment(const uint8_t *in, uint32_t len, const uint32_t *cuts, uint32_t ncuts,
			   uint32_t id6, int reverse, struct nfq_buffer **out)
{
	int v4 = in[0] >> 4 == 4;
	uint32_t ihl = (uint32_t)(in[0] & 15) * 4;
	/* IPv6: the unfragmentable part is what the first piece has before
	 * its Fragment header, which the next-header byte at next_at names. */
	const struct nfq_buffer *first = out[reverse ? ncuts : 0];
	uint32_t unfrag = v4 ? ihl : 40, next_at = 6;
	if (!v4) {
		uint32_t off = 40, next = in[6];
		while (next == 0 || next == 43 || next == 60) {
			check(off + 8 <= len);
			uint32_t end = off + ((uint32_t)in[off + 1] + 1) * 8;
			if (next == 0 || next == 43) {
				unfrag = end;
				next_at = off;
			}
			next = in[off];
			off = end;
		}
		check(first->data[next_at] == 44);
	}
	uint32_t data_len = len - unfrag;
	for (uint32_t i = 0; i <= ncuts; i++) {
		uint32_t start, end;
		range_of(cuts, ncuts, data_len, 0, i, &start, &end);
		const struct nfq_buffer *b = out[reverse ? ncuts - i : i];
		const uint8_t *p = b->data;
		if (v4) {
			uint32_t frag = get16(in + 6);
			check(b->len == ihl + end - start);
			check(memcmp(p + ihl, in + ihl + start, end - start) == 0);
			const uint32_t skip[] = { 2, 4, 6, 8, 10, 12, 20, i ? ihl : 20 };
			same_except(in, p, ihl, skip, 4);
			check(get16(p + 2) == b->len);
			check((get16(p + 6) & 0x1fff) * 8 == (frag & 0x1fff) * 8 + start);
			check(!!(get16(p + 6) & 0x2000) == (i < ncuts || (frag & 0x2000)));
			check(!(get16(p + 6) & 0x4000));
			check_sum(sum16(p, ihl, 0));
		} else {
			check(b->len == unfrag + 8 + end - start);
			const uint32_t skip[] = { 4, 6, next_at, next_at + 1 };
			same_except(in, p, unfrag, skip, 2);
			check(p[next_at] == 44);
			const uint8_t *fh = p + unfrag;
			check(fh[0] == in[next_at] && fh[1] == 0);
			check(get16(fh + 2) == (start | (i < ncuts)));
			check(get32(fh + 4) == id6);
			check(memcmp(fh + 8, in + unfrag + start, end - start) == 0);
			check(get16(p + 4) == b->len - 40);
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct nfq_buffer *out[NFQ_BUILD_MAX_PIECES];
	if (!out[0]) {
		for (int i = 0; i < NFQ_BUILD_MAX_PIECES; i++)
			out[i] = malloc(PIECE_SIZE);
	}
	if (size < 4)
		return 0;
	int fragment = data[0] & 1, reverse = data[0] & 2;
	uint32_t ncuts = data[1] % (NFQ_BUILD_MAX_PIECES + 2), extra = get16(data + 2);
	if (size < 4 + 2 * (size_t)ncuts)
		return 0;
	uint32_t cuts[NFQ_BUILD_MAX_PIECES + 2];
	for (uint32_t i = 0; i < ncuts; i++)
		cuts[i] = get16(data + 4 + 2 * i);
	size_t at = 4 + 2 * (size_t)ncuts, len = size - at;
	uint8_t *in = malloc(len ? len : 1);
	if (!in)
		return 0;
	memcpy(in, data + at, len);
	char err[160];
	uint32_t flags = reverse ? NFQ_BUILD_REVERSE : 0;
	int n = fragment ? nfq_build_ip_fragment(in, (uint32_t)len, cuts, ncuts, extra * 65537u, flags, out,
						 err, sizeof err)
			 : nfq_build_tcp_split(in, (uint32_t)len, cuts, ncuts, extra, flags, out, err, sizeof err);
	if (n >= 0) {
		check((uint32_t)n == ncuts + 1);
		if (fragment)
			check_fragment(in, (uint32_t)len, cuts, ncuts, extra * 65537u, reverse, out);
		else
			check_split(in, (uint32_t)len, cuts, ncuts, extra, reverse, out);
	} else {
		check(memchr(err, 0, sizeof err) && err[0]);
	}
	free(in);
	return 0;
}

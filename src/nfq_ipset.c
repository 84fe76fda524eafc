/*
 * nfq_ipset.c: sets of IPv4 and IPv6 addresses and prefixes (nfq.ipset),
 * longest-prefix match. One hash table holds every prefix, keyed by family,
 * length and masked address; a query masks its address to each length that
 * has entries, longest first, and probes once per length: the first hit is
 * the longest match. Lists use few lengths (/32 and /24, or the /8-/24 of
 * routing-style lists), so a query costs a few probes.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nfq_internal.h"
#include "nfq_set_common.h"

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)nfq_get32(p) << 32 | nfq_get32(p + 4);
}

static void put64(uint8_t *p, uint64_t v)
{
	nfq_put32(p, (uint32_t)(v >> 32));
	nfq_put32(p + 4, (uint32_t)v);
}

static inline uint32_t key_hash(uint64_t hi, uint64_t lo, unsigned plen, unsigned v6)
{
	uint64_t x = (hi ^ (uint64_t)(plen | v6 << 8) * 0x9e3779b97f4a7c15ull) * 0xff51afd7ed558ccdull ^ lo;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return (uint32_t)x;
}

static inline uint64_t high_bits(unsigned bits)
{
	return bits ? ~0ull << (64 - bits) : 0;
}

/* hi, lo masked to plen bits of an address of 32 (IPv4, in lo) or 128 bits. */
static inline void mask_to(uint64_t *hi, uint64_t *lo, unsigned plen, unsigned v6)
{
	if (!v6) {
		*lo &= high_bits(plen) >> 32;
	} else if (plen <= 64) {
		*hi &= high_bits(plen);
		*lo = 0;
	} else {
		*lo &= high_bits(plen - 64);
	}
}

static inline uint32_t lookup(const struct nfq_ipset *s, uint64_t hi, uint64_t lo, unsigned plen, unsigned v6)
{
	uint32_t h = key_hash(hi, lo, plen, v6);
	for (uint32_t i = h & s->mask;; i = (i + 1) & s->mask) {
		const struct nfq_set_slot *slot = &s->slots[i];
		if (!slot->ref)
			return 0;
		if (slot->hash != h)
			continue;
		const struct nfq_ipset_entry *e = &s->entries[slot->ref - 1];
		if (e->lo == lo && e->hi == hi && e->plen == plen && e->v6 == v6)
			return slot->ref;
	}
}

struct nfq_ipset *nfq_ipset_new(void)
{
	struct nfq_ipset *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->slots = nfq_set_alloc(NFQ_SET_FIRST_SLOTS * sizeof *s->slots);
	if (!s->slots) {
		free(s);
		return NULL;
	}
	s->mask = NFQ_SET_FIRST_SLOTS - 1;
	return s;
}

void nfq_ipset_free(struct nfq_ipset *s)
{
	if (!s)
		return;
	nfq_set_free(s->slots, ((size_t)s->mask + 1) * sizeof *s->slots);
	nfq_set_free(s->entries, (size_t)s->entries_cap * sizeof *s->entries);
	free(s);
}

/* Note plen among the lengths in use, keeping them longest first. */
static void use_length(uint8_t *lengths, uint8_t *n, unsigned plen)
{
	unsigned i = 0;
	while (i < *n && lengths[i] > plen)
		i++;
	if (i < *n && lengths[i] == plen)
		return;
	memmove(lengths + i + 1, lengths + i, *n - i);
	lengths[i] = (uint8_t)plen;
	(*n)++;
}

static int add_prefix(struct nfq_ipset *s, const uint8_t *addr, unsigned v6, unsigned plen)
{
	uint64_t hi = v6 ? get64(addr) : 0, lo = v6 ? get64(addr + 8) : nfq_get32(addr);
	mask_to(&hi, &lo, plen, v6);
	if (nfq_set_reserve(&s->slots, &s->mask, (uint64_t)s->nentries + 1) != 0)
		return -1;
	if (lookup(s, hi, lo, plen, v6)) {
		s->report.duplicates++;
		return 0;
	}
	if (nfq_set_grow((void **)&s->entries, &s->entries_cap, s->nentries + 1, sizeof *s->entries) != 0)
		return -1;
	s->entries[s->nentries] = (struct nfq_ipset_entry){ .hi = hi, .lo = lo, .plen = (uint8_t)plen, .v6 = (uint8_t)v6 };
	s->nentries++;
	uint32_t h = key_hash(hi, lo, plen, v6);
	uint32_t i = h & s->mask;
	while (s->slots[i].ref)
		i = (i + 1) & s->mask;
	s->slots[i] = (struct nfq_set_slot){ h, s->nentries };
	if (v6)
		use_length(s->v6_lengths, &s->n_v6, plen);
	else
		use_length(s->v4_lengths, &s->n_v4, plen);
	s->report.added++;
	return 0;
}

/* "addr" or "addr/len" in p[0..n): 1 if added, 0 if it is not one, -1 on ENOMEM. */
static int add_field(struct nfq_ipset *s, const char *p, size_t n)
{
	const char *slash = memchr(p, '/', n);
	size_t addr_len = slash ? (size_t)(slash - p) : n;
	uint8_t addr[16];
	int size = nfq_set_address(p, addr_len, addr);
	if (!size)
		return 0;
	unsigned max = size * 8, plen = max;
	if (slash) {
		const char *d = slash + 1, *end = p + n;
		if (d == end || end - d > 3)
			return 0;
		plen = 0;
		for (; d < end; d++) {
			if (*d < '0' || *d > '9')
				return 0;
			plen = plen * 10 + (unsigned)(*d - '0');
		}
		if (plen > max)
			return 0;
	}
	return add_prefix(s, addr, size == 16, plen) == 0 ? 1 : -1;
}

static int add_line(void *set, const char *line, size_t n)
{
	struct nfq_ipset *s = set;
	struct nfq_set_span rest = nfq_set_trim(line, n);
	/* # comments, and ; ones as in Spamhaus' DROP lists. */
	if (rest.n == 0 || rest.p[0] == '#' || rest.p[0] == ';') {
		s->report.skipped++;
		return 0;
	}
	struct nfq_set_span field = nfq_set_token(&rest);
	for (size_t i = 0; i < field.n; i++) {
		if (field.p[i] == '#' || field.p[i] == ';') {
			field.n = i;
			break;
		}
	}
	int rc = add_field(s, field.p, field.n);
	if (rc < 0)
		return -1;
	if (rc == 0)
		nfq_set_report_bad(&s->report, line, n);
	return 0;
}

int nfq_ipset_add_text(struct nfq_ipset *s, const char *text, size_t len)
{
	/* Room for an entry a line up front: the table is not doubled nor the array copied while loading. */
	uint64_t want = s->nentries + nfq_set_count_lines(text, len);
	if (want <= UINT32_MAX &&
	    (nfq_set_reserve(&s->slots, &s->mask, want) != 0 ||
	     nfq_set_grow((void **)&s->entries, &s->entries_cap, (uint32_t)want, sizeof *s->entries) != 0))
		return -1;
	return nfq_set_each_line(text, len, &s->report, add_line, s);
}

int nfq_ipset_add_item(struct nfq_ipset *s, const char *item, size_t len)
{
	s->report.lines++;
	return add_line(s, item, len);
}

/* nfq_ipset_add_text for nfq_set_add_file. */
static int add_text(void *set, const char *text, size_t len)
{
	return nfq_ipset_add_text(set, text, len);
}

int nfq_ipset_add_file(struct nfq_ipset *s, const char *path)
{
	return nfq_set_add_file(path, add_text, s);
}

void nfq_ipset_trim(struct nfq_ipset *s)
{
	nfq_set_shrink(&s->slots, &s->mask, s->nentries);
	nfq_set_fit((void **)&s->entries, &s->entries_cap, s->nentries, sizeof *s->entries);
}

static uint32_t match_v4(const struct nfq_ipset *s, const uint8_t *addr)
{
	uint64_t a = nfq_get32(addr);
	for (unsigned k = 0; k < s->n_v4; k++) {
		unsigned plen = s->v4_lengths[k];
		uint32_t found = lookup(s, 0, a & high_bits(plen) >> 32, plen, 0);
		if (found)
			return found;
	}
	return 0;
}

static uint32_t match_v6(const struct nfq_ipset *s, const uint8_t *addr)
{
	uint64_t a_hi = get64(addr), a_lo = get64(addr + 8);
	for (unsigned k = 0; k < s->n_v6; k++) {
		unsigned plen = s->v6_lengths[k];
		uint64_t hi = a_hi, lo = a_lo;
		mask_to(&hi, &lo, plen, 1);
		uint32_t found = lookup(s, hi, lo, plen, 1);
		if (found)
			return found;
	}
	return 0;
}

uint32_t nfq_ipset_match(const struct nfq_ipset *s, const uint8_t *addr, size_t len)
{
	if (len == 4)
		return match_v4(s, addr);
	if (len == 16)
		return match_v6(s, addr);
	return 0;
}

uint32_t nfq_ipset_match_packet(const struct nfq_ipset *s, const uint8_t *ip, size_t len, int dst)
{
	if (len >= 20 && ip[0] >> 4 == 4)
		return match_v4(s, ip + (dst ? 16 : 12));
	if (len >= 40 && ip[0] >> 4 == 6)
		return match_v6(s, ip + (dst ? 24 : 8));
	return 0;
}

int nfq_ipset_parse_address(const char *text, size_t len, uint8_t *out)
{
	return nfq_set_address(text, len, out);
}

int nfq_ipset_format(const struct nfq_ipset *s, uint32_t i, char *buf, size_t buflen)
{
	if (i == 0 || i > s->nentries)
		return -1;
	const struct nfq_ipset_entry *e = &s->entries[i - 1];
	uint8_t addr[16];
	if (e->v6) {
		put64(addr, e->hi);
		put64(addr + 8, e->lo);
	} else {
		nfq_put32(addr, (uint32_t)e->lo);
	}
	char text[INET6_ADDRSTRLEN];
	if (!inet_ntop(e->v6 ? AF_INET6 : AF_INET, addr, text, sizeof text))
		return -1;
	int n = e->plen == (e->v6 ? 128 : 32) ? snprintf(buf, buflen, "%s", text)
					       : snprintf(buf, buflen, "%s/%u", text, e->plen);
	return n < 0 || (size_t)n >= buflen ? -1 : n;
}

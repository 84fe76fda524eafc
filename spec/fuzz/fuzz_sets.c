/*
 * fuzz_sets.c: libFuzzer target for the domain and address sets: their list
 * and file parsers, and their matching checked against a brute-force walk
 * over every entry. The input:
 *   byte 0       bit 0: an address set (else a domain set), bit 1: the text
 *                given item by item (its lines as a list), else as a file
 *   then         the list, up to the first NUL byte; after it, the queries,
 *                one a line (a domain set: names; an address set: raw bytes,
 *                4 or 16 of them an address, any length as a packet)
 * Each query is copied to a buffer of its exact size, so that a read past it
 * is caught. A result that is not what the brute force finds aborts.
 * Build: make fuzz. Replay without clang: make fuzz-replay.
 */
#include <stdlib.h>
#include <string.h>

#include "nfq_sets.h"

static void check(int ok)
{
	if (!ok)
		abort();
}

static int lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c | 0x20 : c;
}

/* Does the domain entry i cover name[0..len)? */
static int covers(const struct nfq_domainset *s, uint32_t i, const uint8_t *name, size_t len)
{
	const uint8_t *e = s->arena + s->offsets[i - 1];
	size_t n = e[0];
	if (len && name[len - 1] == '.')
		len--;
	if (n > len || (n < len && ((e[1] & NFQ_DOMAIN_EXACT) || name[len - n - 1] != '.')))
		return 0;
	for (size_t k = 0; k < n; k++)
		if (lower(name[len - n + k]) != e[NFQ_DOMAIN_ENTRY_HEAD + k])
			return 0;
	return 1;
}

static void domain_queries(const struct nfq_domainset *s, const uint8_t *q, size_t len)
{
	for (uint32_t i = 1; i <= s->nentries; i++) {
		const uint8_t *e = s->arena + s->offsets[i - 1];
		check(e[0] > 0 && e[0] <= 253 && e[NFQ_DOMAIN_ENTRY_HEAD] != '.' && e[NFQ_DOMAIN_ENTRY_HEAD + e[0] - 1] != '.');
		uint32_t index;
		memcpy(&index, e + 2, sizeof index);
		check(index == i);
		check(nfq_domainset_match(s, e + NFQ_DOMAIN_ENTRY_HEAD, e[0]) == i);
	}
	while (len) {
		const uint8_t *nl = memchr(q, '\n', len);
		size_t n = nl ? (size_t)(nl - q) : len;
		uint8_t *name = malloc(n ? n : 1);
		memcpy(name, q, n);
		uint32_t got = nfq_domainset_match(s, name, n);
		size_t best = 0;
		uint32_t want = 0;
		for (uint32_t i = 1; i <= s->nentries; i++) {
			size_t elen = s->arena[s->offsets[i - 1]];
			if (covers(s, i, name, n) && elen >= best) {
				best = elen;
				want = i;
			}
		}
		check(got == want);
		free(name);
		q += n + (nl != NULL);
		len -= n + (nl != NULL);
	}
}

static int holds(const struct nfq_ipset_entry *e, const uint8_t *addr, int v6)
{
	uint8_t net[16];
	for (int k = 0; k < 8; k++) {
		net[k] = (uint8_t)(e->hi >> (56 - 8 * k));
		net[8 + k] = (uint8_t)(e->lo >> (56 - 8 * k));
	}
	const uint8_t *p = v6 ? net : net + 12;
	if (e->v6 != v6)
		return 0;
	for (unsigned bit = 0; bit < e->plen; bit++)
		if (((p[bit / 8] ^ addr[bit / 8]) >> (7 - bit % 8)) & 1)
			return 0;
	return 1;
}

static uint32_t brute_match(const struct nfq_ipset *s, const uint8_t *addr, int v6)
{
	uint32_t want = 0;
	for (uint32_t i = 1; i <= s->nentries; i++)
		if (holds(&s->entries[i - 1], addr, v6) && (!want || s->entries[i - 1].plen > s->entries[want - 1].plen))
			want = i;
	return want;
}

static void ip_queries(const struct nfq_ipset *s, const uint8_t *q, size_t len)
{
	char text[64];
	uint8_t addr[16];
	for (uint32_t i = 1; i <= s->nentries; i++) {
		int n = nfq_ipset_format(s, i, text, sizeof text);
		check(n > 0);
		int size = nfq_ipset_parse_address(text, strcspn(text, "/"), addr);
		check(size == (s->entries[i - 1].v6 ? 16 : 4));
		check(brute_match(s, addr, size == 16) != 0);
	}
	while (len) {
		const uint8_t *nl = memchr(q, '\n', len);
		size_t n = nl ? (size_t)(nl - q) : len;
		uint8_t *bytes = malloc(n ? n : 1);
		memcpy(bytes, q, n);
		uint32_t got = nfq_ipset_match(s, bytes, n);
		if (n == 4 || n == 16)
			check(got == brute_match(s, bytes, n == 16));
		else
			check(got == 0);
		for (int dst = 0; dst < 2; dst++) {
			got = nfq_ipset_match_packet(s, bytes, n, dst);
			if (n >= 20 && bytes[0] >> 4 == 4)
				check(got == brute_match(s, bytes + (dst ? 16 : 12), 0));
			else if (n >= 40 && bytes[0] >> 4 == 6)
				check(got == brute_match(s, bytes + (dst ? 24 : 8), 1));
			else
				check(got == 0);
		}
		free(bytes);
		q += n + (nl != NULL);
		len -= n + (nl != NULL);
	}
}

/* Each line of list as one item. */
static void add_items(void *s, int ip, const uint8_t *list, size_t len)
{
	while (len) {
		const uint8_t *nl = memchr(list, '\n', len);
		size_t n = nl ? (size_t)(nl - list) : len;
		char *item = malloc(n ? n : 1);
		memcpy(item, list, n);
		check((ip ? nfq_ipset_add_item(s, item, n) : nfq_domainset_add_item(s, item, n)) == 0);
		free(item);
		list += n + (nl != NULL);
		len -= n + (nl != NULL);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	int ip = data[0] & 1, items = data[0] & 2;
	data++;
	size--;
	const uint8_t *nul = memchr(data, 0, size);
	size_t list_len = nul ? (size_t)(nul - data) : size;
	const uint8_t *q = nul ? nul + 1 : data + size;
	size_t q_len = (size_t)(data + size - q);
	char *list = malloc(list_len ? list_len : 1);
	memcpy(list, data, list_len);
	if (ip) {
		struct nfq_ipset *s = nfq_ipset_new();
		check(s != NULL);
		if (items)
			add_items(s, 1, (const uint8_t *)list, list_len);
		else
			check(nfq_ipset_add_text(s, list, list_len) == 0);
		nfq_ipset_trim(s);
		struct nfq_set_report *r = &s->report;
		check(r->added == s->nentries && r->bad <= r->lines);
		ip_queries(s, q, q_len);
		nfq_ipset_free(s);
	} else {
		struct nfq_domainset *s = nfq_domainset_new();
		check(s != NULL);
		if (items)
			add_items(s, 0, (const uint8_t *)list, list_len);
		else
			check(nfq_domainset_add_text(s, list, list_len) == 0);
		nfq_domainset_trim(s);
		struct nfq_set_report *r = &s->report;
		check(r->added == s->nentries && r->bad <= r->lines);
		domain_queries(s, q, q_len);
		nfq_domainset_free(s);
	}
	free(list);
	return 0;
}

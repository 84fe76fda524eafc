/*
 * nfq_sets.h: domain-name and address sets (nfq.domainset, nfq.ipset),
 * built once from a list or a file and queried per packet with pointers.
 *
 * Both are open-addressing hash tables of struct nfq_set_slot (a 32-bit hash
 * and where the entry is, 0 for an empty slot; at most half full) over
 * arrays that hold the entries themselves. A domain set keeps its names in
 * one arena; a query hashes the name's suffixes at label boundaries right to
 * left, one probe each. An address set keeps one table for every prefix
 * length, probed longest length first, over the lengths that have entries.
 * Sets are read-only once built: lua/nfq/sets.lua builds them, and frees
 * them from the FFI finalizer.
 */
#ifndef NFQ_SETS_H
#define NFQ_SETS_H

#include <stddef.h>
#include <stdint.h>

#pragma GCC visibility push(default)
/* BEGIN CDEF */
enum {
	NFQ_SET_SAMPLES = 5,		/* bad lines a report keeps */
	NFQ_SET_SAMPLE_LEN = 64,	/* bytes of each kept */
	NFQ_DOMAIN_EXACT = 1,		/* an entry written =name: that name only, not its subdomains */
	NFQ_DOMAIN_ENTRY_HEAD = 6	/* a domain entry in the arena: length, flags, index (4 bytes), name */
};

struct nfq_set_slot {
	uint32_t hash;
	uint32_t ref;			/* 0: empty; an address set's entry index (from 1), a domain set's
					 * entry offset in the arena plus 1 */
};

/* What loading found, line by line (a list's items count as lines). */
struct nfq_set_report {
	uint32_t lines;
	uint32_t added;			/* new entries */
	uint32_t duplicates;		/* entries the set had already */
	uint32_t skipped;		/* blank lines, comments, hosts-file names such as localhost */
	uint32_t bad;			/* lines that are not entries */
	uint32_t bad_line[5];		/* NFQ_SET_SAMPLES: the line numbers of the first bad ones */
	char bad_text[5][64];		/* their text, cut to NFQ_SET_SAMPLE_LEN - 1 bytes */
};

struct nfq_domainset {
	uint32_t nentries;		/* entries */
	uint32_t mask;			/* slots - 1 */
	struct nfq_set_slot *slots;
	uint32_t *offsets;		/* entry i starts at arena + offsets[i - 1] */
	uint8_t *arena;			/* per entry: its length, its flags (NFQ_DOMAIN_*), its index, the
					 * lowercased name */
	uint32_t offsets_cap;
	uint32_t arena_len;
	uint32_t arena_cap;
	uint32_t reserved;
	struct nfq_set_report report;
};

/* A prefix: the address masked to plen bits, as two host-order halves (IPv4 in lo). */
struct nfq_ipset_entry {
	uint64_t hi;
	uint64_t lo;
	uint8_t plen;
	uint8_t v6;
	uint8_t reserved[6];
};

struct nfq_ipset {
	uint32_t nentries;
	uint32_t mask;
	struct nfq_set_slot *slots;
	struct nfq_ipset_entry *entries;
	uint32_t entries_cap;
	uint8_t n_v4;			/* prefix lengths in use, longest first */
	uint8_t n_v6;
	uint8_t v4_lengths[33];
	uint8_t v6_lengths[129];
	struct nfq_set_report report;
};

/* NULL when out of memory. */
struct nfq_domainset *nfq_domainset_new(void);
void nfq_domainset_free(struct nfq_domainset *s);
/*
 * Add the names of text[0..len), line by line (one name a line, hosts-file
 * lines, ||name^ lines, dnsmasq address=/name/ lines, comments), or of one
 * list item; what each line gave
 * goes to s->report. 0, or -1 and errno ENOMEM (the set keeps what it had).
 */
int nfq_domainset_add_text(struct nfq_domainset *s, const char *text, size_t len);
int nfq_domainset_add_item(struct nfq_domainset *s, const char *item, size_t len);
/* The same from a file: -1 and errno when it cannot be read. */
int nfq_domainset_add_file(struct nfq_domainset *s, const char *path);
/* Give back the spare room of the growing arrays, once loading is done. */
void nfq_domainset_trim(struct nfq_domainset *s);
/* The entry that covers name[0..len) (the longest such), or 0. */
uint32_t nfq_domainset_match(const struct nfq_domainset *s, const uint8_t *name, size_t len);

struct nfq_ipset *nfq_ipset_new(void);
void nfq_ipset_free(struct nfq_ipset *s);
/* As for domain sets: addresses and prefixes, the first field of each line. */
int nfq_ipset_add_text(struct nfq_ipset *s, const char *text, size_t len);
int nfq_ipset_add_item(struct nfq_ipset *s, const char *item, size_t len);
int nfq_ipset_add_file(struct nfq_ipset *s, const char *path);
void nfq_ipset_trim(struct nfq_ipset *s);
/* The longest prefix holding the 4- or 16-byte address addr, or 0. */
uint32_t nfq_ipset_match(const struct nfq_ipset *s, const uint8_t *addr, size_t len);
/* The same for the source (dst 0) or destination address of an IPv4/IPv6 packet; 0 for other bytes. */
uint32_t nfq_ipset_match_packet(const struct nfq_ipset *s, const uint8_t *ip, size_t len, int dst);
/* The address in text[0..len) into out: 4, 16, or 0 when it is not one. */
int nfq_ipset_parse_address(const char *text, size_t len, uint8_t *out);
/* Entry i as text ("10.0.0.0/8", "2001:db8::1") into buf: its length, or -1. */
int nfq_ipset_format(const struct nfq_ipset *s, uint32_t i, char *buf, size_t buflen);
/* END CDEF */
#pragma GCC visibility pop

#endif

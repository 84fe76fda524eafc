/*
 * nfq_set_common.h: what the domain and address sets share: the slot table,
 * the hash finish, reading lines and files, the load report.
 */
#ifndef NFQ_SET_COMMON_H
#define NFQ_SET_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "nfq_sets.h"

/* The slots a new set starts with. */
#define NFQ_SET_FIRST_SLOTS 16u

/* murmur3's finalizer: every bit of h reaches the low bits that pick the slot. */
static inline uint32_t nfq_set_mix(uint32_t h)
{
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

static inline int nfq_set_space(int c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* A text's piece without the white space around it. */
struct nfq_set_span {
	const char *p;
	size_t n;
};

struct nfq_set_span nfq_set_trim(const char *p, size_t n);
/* The next white-space-separated token of *rest (n 0: none left); *rest moves past it. */
struct nfq_set_span nfq_set_token(struct nfq_set_span *rest);

/*
 * Room in the table for want entries, doubling it (and placing every entry
 * again by its hash) until they would fill at most half of it.
 * 0, or -1 and errno ENOMEM.
 */
int nfq_set_reserve(struct nfq_set_slot **slots, uint32_t *mask, uint64_t want);
/* The table made as small as count entries allow (room reserved for lines that held none), when it can. */
void nfq_set_shrink(struct nfq_set_slot **slots, uint32_t *mask, uint32_t count);

/*
 * The sets' arrays: zeroed memory, with huge pages when large (so freed and
 * resized knowing their size). NULL and errno ENOMEM when out of memory;
 * nfq_set_resize leaves p as it was then.
 */
void *nfq_set_alloc(size_t bytes);
void nfq_set_free(void *p, size_t bytes);
void *nfq_set_resize(void *p, size_t old_bytes, size_t new_bytes);

/* The lines of text[0..len) (a last one without an end of line counts). */
uint64_t nfq_set_count_lines(const char *text, size_t len);

/* Count line as bad and keep its number and text if it is among the first few. */
void nfq_set_report_bad(struct nfq_set_report *r, const char *line, size_t n);

/*
 * Call add for each line of text (without its end of line), numbering them in
 * r->lines. Stops at the first add that returns -1, and returns -1 then.
 */
int nfq_set_each_line(const char *text, size_t len, struct nfq_set_report *r,
		      int (*add)(void *set, const char *line, size_t n), void *set);

/* Read the whole file at path and give its text to add_text: what add_text
 * returns, or -1 and errno when the file cannot be read. */
int nfq_set_add_file(const char *path, int (*add_text)(void *set, const char *text, size_t len), void *set);

/* The IPv4 or IPv6 address in p[0..n) into out: 4, 16, or 0 when it is not one. */
int nfq_set_address(const char *p, size_t n, uint8_t *out);

/* Grow *array (of elem bytes each, *cap of them) to hold need; 0, or -1 and errno ENOMEM. */
int nfq_set_grow(void **array, uint32_t *cap, uint32_t need, size_t elem);
/* Shrink it to used elements, when it can. */
void nfq_set_fit(void **array, uint32_t *cap, uint32_t used, size_t elem);

#endif

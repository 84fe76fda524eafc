/*
 * sets_baseline.so: the C baseline of bench/sets.lua. The same lookups as
 * the Lua loops, over the same set and the same queries, from a plain C
 * loop: bench/sets.lua loads it with ffi.load and times it in the same
 * rounds as its Lua loops. The set functions are compiled in from the
 * core's sources (src/nfq_domainset.c, src/nfq_ipset.c) with the same flags.
 * Built by `make -C bench sets_baseline.so`.
 */
#include <stdint.h>

#include "nfq_sets.h"

/* The hits of a pass over names[1..n] (lens[i] bytes each). */
uint32_t sets_baseline_domains(const struct nfq_domainset *s, const uint8_t *const *names, const uint32_t *lens,
			       uint32_t n)
{
	uint32_t hits = 0;
	for (uint32_t i = 1; i <= n; i++)
		hits += nfq_domainset_match(s, names[i], lens[i]) != 0;
	return hits;
}

/* The hits of a pass over the IPv4 addresses at addrs + 4 * i, i = 1..n. */
uint32_t sets_baseline_ipv4(const struct nfq_ipset *s, const uint8_t *addrs, uint32_t n)
{
	uint32_t hits = 0;
	for (uint32_t i = 1; i <= n; i++)
		hits += nfq_ipset_match(s, addrs + 4 * i, 4) != 0;
	return hits;
}

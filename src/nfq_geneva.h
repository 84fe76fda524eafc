/*
 * nfq_geneva.h: the one C helper of nfq.geneva (lua/nfq/geneva.lua), which
 * runs Geneva's strategies. Geneva's packets get their checksums from scapy,
 * which sums a pseudo-header built from the header fields as they are after a
 * tamper (a replaced IP length included), not from the bytes on the wire: so
 * the Lua side builds that pseudo-header sum itself and needs only the sum of
 * a range of bytes.
 */
#ifndef NFQ_GENEVA_H
#define NFQ_GENEVA_H

#include <stddef.h>
#include <stdint.h>

#pragma GCC visibility push(default)
/* BEGIN CDEF */
/* The Internet checksum of data[0..len) with seed (a 32-bit sum of other
 * words, such as a pseudo-header's) added in: the value a checksum field takes. */
uint16_t nfq_geneva_checksum(const uint8_t *data, uint32_t len, uint32_t seed);
/* END CDEF */
#pragma GCC visibility pop

#endif

/*
 * nfq_geneva.c: checksums for nfq.geneva (see nfq_geneva.h).
 */
#include "nfq_geneva.h"
#include "nfq_internal.h"

uint16_t nfq_geneva_checksum(const uint8_t *data, uint32_t len, uint32_t seed)
{
	return nfq_fold(nfq_sum16(data, len, seed));
}

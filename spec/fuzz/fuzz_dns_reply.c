/*
 * fuzz_dns_reply.c: libFuzzer target for the DNS answer builder
 * (nfq_dns_reply_build, src/nfq_dns.c). Byte 0 is the rcode (low 4 bits)
 * and the sinkhole flag (bit 4), byte 1 how much room the output has; the
 * rest is the packet, at its exact size. Every answer must pass the send
 * check, parse as a DNS response with the query's id and question, and get
 * no answer itself (it is not a query).
 * Build: make fuzz. Replay without clang: make fuzz-replay.
 */
#include <stdlib.h>
#include <string.h>

#include "nfq_internal.h"
#include "nfq_names.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	uint32_t rcode = data[0] & 15, flags = data[0] & 16 ? NFQ_DNS_REPLY_SINKHOLE : 0;
	size_t cap = data[1] < 0x80 ? NFQ_DNS_REPLY_MAX_LEN : (size_t)(data[1] & 0x7f) * 4;
	size_t len = size - 2;
	uint8_t *pkt = malloc(len ? len : 1);
	uint8_t *out = malloc(cap ? cap : 1);
	if (!pkt || !out)
		abort();
	memcpy(pkt, data + 2, len);
	int n = nfq_dns_reply_build(out, cap, pkt, len, rcode, flags, 60);
	if (n > (int)cap || n == 0)
		abort();
	if (n > 0) {
		char why[256];
		if (nfq_send_check(out, (size_t)n, why, sizeof why) != 0)
			abort();
		uint32_t off, plen;
		if (nfq_names_payload(out, (size_t)n, &off, &plen) != 17)
			abort();
		static struct nfq_dns d;
		if (nfq_dns_parse(&d, out + off, plen) != 0 || !(d.flags & 0x8000) || d.qdcount != 1)
			abort();
		uint8_t again[NFQ_DNS_REPLY_MAX_LEN];
		if (nfq_dns_reply_build(again, sizeof again, out, (size_t)n, 3, 0, 0) != NFQ_NAMES_ENOTQUERY)
			abort();
	} else if (!nfq_names_strerror(n)[0]) {
		abort();
	}
	free(pkt);
	free(out);
	return 0;
}

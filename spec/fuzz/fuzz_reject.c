/*
 * fuzz_reject.c: libFuzzer target for what pkt:reject() and nfq.send() do
 * with bytes: the reject builders (nfq_reject_build) and the check every
 * packet to send passes (nfq_send_check). The first byte picks the kind of
 * answer, whether checksums are verified and whether a TCP reset goes to
 * the destination, the second how much room the output has; the rest is
 * the packet.
 * Every answer must pass the send check, carry correct checksums, and get
 * no answer itself (an answer to an answer would loop). A reset for the
 * destination ("tcp-reset-both") comes with the sender's: both are built
 * or neither, and the destination's keeps the packet's addresses, ports
 * and sequence number.
 * Build: make fuzz. Replay without clang: make fuzz-replay.
 */
#include <stdlib.h>
#include <string.h>

#include "nfq_internal.h"

static void check_answer(const uint8_t *answer, size_t len)
{
	char why[256];
	if (nfq_send_check(answer, len, why, sizeof why) != 0)
		abort();
	/* The answer to an answer is refused for what it is, not for its
	 * checksum, which is verified first: so every checksum is right. */
	uint8_t *again = malloc(NFQ_REJECT_MAX_LEN);
	if (!again)
		return;
	int rc = nfq_reject_build(again, NFQ_REJECT_MAX_LEN, answer, len, NFQ_REJECT_DEFAULT | NFQ_REJECT_VERIFY_CSUM);
	if (rc != NFQ_REJECT_ERST && rc != NFQ_REJECT_EICMPERROR)
		abort();
	free(again);
	if (answer[0] >> 4 == 4) {
		uint32_t sum = 0;
		for (size_t i = 0; i < 20; i += 2)
			sum += (uint32_t)(answer[i] << 8 | answer[i + 1]);
		while (sum >> 16)
			sum = (sum & 0xffff) + (sum >> 16);
		if (sum != 0xffff)
			abort();
	}
}

/* The reset for the destination against the packet it answers, and the
 * sender's reset built beside it. */
static void check_both(const uint8_t *pkt, size_t len, const uint8_t *reset, int n, uint32_t how)
{
	uint8_t *other = malloc(NFQ_REJECT_MAX_LEN);
	if (!other)
		return;
	int m = nfq_reject_build(other, NFQ_REJECT_MAX_LEN, pkt, len, how & ~(uint32_t)NFQ_REJECT_TO_DESTINATION);
	if ((n < 0 || m < 0) && n != m && n != NFQ_REJECT_EROOM)
		abort();
	if (m > 0)
		check_answer(other, (size_t)m);
	free(other);
	if (n <= 0)
		return;
	int v6 = reset[0] >> 4 == 6;
	size_t addrs = v6 ? 8 : 12, alen = v6 ? 32 : 8, hlen = v6 ? 40 : 20;
	if (memcmp(reset + addrs, pkt + addrs, alen) != 0 || (size_t)n != hlen + 20)
		abort();
	/* Where the packet's TCP header is, without IPv6 extension headers. */
	size_t l4 = v6 ? (pkt[6] == 6 ? 40 : 0) : (size_t)(pkt[0] & 15) * 4;
	const uint8_t *th = reset + hlen;
	if (!l4)
		return;
	uint8_t ack = pkt[l4 + 13] & 0x10;
	if (memcmp(pkt + l4, th, 8) != 0 || th[13] != (0x04 | ack) ||
	    memcmp(th + 8, ack ? pkt + l4 + 8 : (const uint8_t *)"\0\0\0\0", 4) != 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	uint32_t how = (data[0] & 0x0f) | (data[0] & 0x10 ? NFQ_REJECT_VERIFY_CSUM : 0) |
		       (data[0] & 0x20 ? NFQ_REJECT_TO_DESTINATION : 0);
	size_t cap = data[1] < 0x80 ? NFQ_REJECT_MAX_LEN : (size_t)(data[1] & 0x7f) * 10;
	size_t len = size - 2;
	/* Exact-size buffers, so that a read or write past either shows. */
	uint8_t *pkt = malloc(len ? len : 1);
	uint8_t *out = malloc(cap ? cap : 1);
	if (!pkt || !out) {
		free(pkt);
		free(out);
		return 0;
	}
	memcpy(pkt, data + 2, len);
	int n = nfq_reject_build(out, cap, pkt, len, how);
	if (n > (int)cap || n > NFQ_REJECT_MAX_LEN || n == 0 || (n < 0 && n < NFQ_REJECT_EKIND))
		abort();
	if (n > 0)
		check_answer(out, (size_t)n);
	if ((how & NFQ_REJECT_TO_DESTINATION) && (how & NFQ_REJECT_KIND_MASK) == NFQ_REJECT_TCP_RESET)
		check_both(pkt, len, out, n, how);
	if (n < 0 && !nfq_reject_strerror(n)[0])
		abort();
	char why[256];
	nfq_send_check(pkt, len, why, sizeof why);
	free(pkt);
	free(out);
	return 0;
}

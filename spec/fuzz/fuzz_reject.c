/*
 * fuzz_reject.c: libFuzzer target for what pkt:reject() and nfq.send() do
 * with bytes: the reject builders (nfq_reject_build) and the check every
 * packet to send passes (nfq_send_check). The first byte picks the kind of
 * answer and whether checksums are verified, the second how much room the
 * output has; the rest is the packet.
 * Every answer must pass the send check, carry correct checksums, and get
 * no answer itself (an answer to an answer would loop).
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	uint32_t how = (data[0] & 0x0f) | (data[0] & 0x10 ? NFQ_REJECT_VERIFY_CSUM : 0);
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
	if (n < 0 && !nfq_reject_strerror(n)[0])
		abort();
	char why[256];
	nfq_send_check(pkt, len, why, sizeof why);
	free(pkt);
	free(out);
	return 0;
}

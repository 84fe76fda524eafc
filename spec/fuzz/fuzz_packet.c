/*
 * fuzz_packet.c: libFuzzer target for the C parsers: a netlink packet
 * message (nfq_packet_parse), then the IP packet inside it and the input
 * itself as an IP packet (nfq_transport_offset, nfq_fix_checksums).
 * Build: make fuzz. Replay without clang: make fuzz-replay.
 */
#include <stdlib.h>
#include <string.h>

#include "nfq_core.h"

static void check_ip(const uint8_t *data, size_t len)
{
	uint8_t proto;
	int off = nfq_transport_offset(data, len, &proto);
	if (off > (int)len)
		abort();
	if (!data)
		return;
	/* fix_checksums writes: give it an exact-size copy so overruns show. */
	uint8_t *copy = malloc(len ? len : 1);
	uint8_t *again = malloc(len ? len : 1);
	if (!copy || !again) {
		free(copy);
		free(again);
		return;
	}
	memcpy(copy, data, len);
	if (nfq_fix_checksums(copy, len) == 0) {
		/* Fixed is fixed: a second pass changes nothing. */
		memcpy(again, copy, len);
		nfq_fix_checksums(again, len);
		if (memcmp(again, copy, len) != 0)
			abort();
		/* An IPv4 fragment keeps every byte past its header. */
		size_t ihl = (size_t)(data[0] & 15) * 4;
		if (data[0] >> 4 == 4 && ((data[6] << 8 | data[7]) & 0x3fff) &&
		    memcmp(copy + ihl, data + ihl, len - ihl) != 0)
			abort();
	}
	free(copy);
	free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nfq_packet p;
	memset(&p, 0, sizeof p);
	/* An exact-size copy, so that a read past the message is caught. */
	uint8_t *msg = malloc(size ? size : 1);
	if (!msg)
		return 0;
	memcpy(msg, data, size);
	if (nfq_packet_parse(&p, msg, size) == 0) {
		volatile uint8_t sum = 0;
		for (uint32_t i = 0; i < p.payload_len; i++)
			sum ^= p.payload[i];
		for (uint32_t i = 0; i < p.l2hdr_len; i++)
			sum ^= p.l2hdr[i];
		for (uint32_t i = 0; i < p.secctx_len; i++)
			sum ^= (uint8_t)p.secctx[i];
		check_ip(p.payload, p.payload_len);
	}
	free(msg);
	check_ip(data, size);

	/* The replay's link layers: the first byte picks one. */
	static const int links[] = { 1, 12, 14, 101, 113, 228, 229, 276 };
	if (size > 0) {
		uint32_t iplen;
		uint16_t proto;
		struct nfq_packet meta;
		memset(&meta, 0, sizeof meta);
		uint8_t *frame = malloc(size - 1 ? size - 1 : 1);
		if (frame) {
			memcpy(frame, data + 1, size - 1);
			const uint8_t *ip = nfq_link_payload(links[data[0] % 8], frame, (uint32_t)(size - 1),
							     &iplen, &proto, &meta);
			if (ip && (ip < frame || ip + iplen > frame + size - 1))
				abort();
			if (ip)
				check_ip(ip, iplen);
			free(frame);
		}
	}
	return 0;
}

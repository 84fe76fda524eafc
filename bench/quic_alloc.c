/*
 * quic_alloc.c: how many heap allocations nfq_quic_initial() costs per
 * packet, counted by valgrind: run it for N and 2N packets and compare the
 * totals. With vary 0 every packet is of one connection (the keys are kept);
 * with vary 1 each has another connection ID, so the keys are derived anew
 * (and the packet, no longer matching them, does not decrypt).
 *   make all && make -C bench quic_alloc
 *   valgrind bench/quic_alloc spec/fixtures/quic-rfc9001-a2.bin 1000 1 2>&1 | grep 'total heap usage'
 */
#include <stdio.h>
#include <stdlib.h>

#include "nfq_names.h"

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s PACKET COUNT VARY\n", argv[0]);
		return 2;
	}
	static uint8_t pkt[65536];
	static struct nfq_quic q;
	FILE *f = fopen(argv[1], "rb");
	if (!f) {
		perror(argv[1]);
		return 1;
	}
	size_t len = fread(pkt, 1, sizeof pkt, f);
	fclose(f);
	int n = atoi(argv[2]), vary = atoi(argv[3]), decrypted = 0;
	if (nfq_quic_init(&q) != 0)
		return 1;
	for (int i = 0; i < n; i++) {
		if (vary)
			pkt[6]++;	/* the first byte of the Destination Connection ID */
		decrypted += nfq_quic_initial(&q, pkt, len) == 0;
	}
	nfq_quic_close(&q);
	printf("%d packets, %d decrypted\n", n, decrypted);
	return 0;
}

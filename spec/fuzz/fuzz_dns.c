/*
 * fuzz_dns.c: libFuzzer target for the DNS parser (nfq_dns_parse and the
 * answer iterator, src/nfq_dns.c). The input is the message, copied to a
 * buffer of its exact size so that a read past it is caught. Every name
 * must be NUL-terminated text of the length given, at most 253 bytes, and
 * the iterator must stop within ancount answers.
 * Build: make fuzz. Replay without clang: make fuzz-replay.
 */
#include <stdlib.h>
#include <string.h>

#include "nfq_names.h"

static void check_name(const char *name, size_t len)
{
	if (len > 253 || strlen(name) != len)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *msg = malloc(size ? size : 1);
	if (!msg)
		return 0;
	memcpy(msg, data, size);
	static struct nfq_dns d;
	int rc = nfq_dns_parse(&d, msg, size);
	if (rc > 0 || (rc < 0 && !nfq_names_strerror(rc)[0]))
		abort();
	if (rc == 0) {
		check_name(d.qname, d.qname_len);
		int n = 0, got;
		while ((got = nfq_dns_next_answer(&d)) == 1) {
			check_name(d.an_name, d.an_name_len);
			if (d.an_rdata + d.an_rdlength > size || ++n > d.ancount)
				abort();
		}
		if (got == 0 && n != d.ancount)
			abort();
	}
	free(msg);
	return 0;
}

/*
 * fuzz_tls.c: libFuzzer target for the ClientHello parser (src/nfq_tls.c),
 * over a record stream and over bare handshake bytes, each at its exact
 * size. The server name must be NUL-terminated text of its length, the
 * ALPN list whole length-prefixed names, and a ClientHello found must lie
 * inside the input.
 * Build: make fuzz. Replay without clang: make fuzz-replay.
 */
#include <stdlib.h>
#include <string.h>

#include "nfq_names.h"

static void check(const struct nfq_tls *t, int rc, size_t size)
{
	if (rc > 0 || (rc < 0 && !nfq_names_strerror(rc)[0]))
		abort();
	if (rc != 0)
		return;
	if (t->consumed > size || t->server_name_len >= NFQ_TLS_SNI_MAX || strlen(t->server_name) != t->server_name_len)
		abort();
	size_t at = 0, names = 0;
	while (at < t->alpn_len) {
		at += 1 + (size_t)t->alpn_list[at];
		names++;
	}
	if (at != t->alpn_len || names != t->alpn_count || t->versions_count > NFQ_TLS_VERSIONS_MAX)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *p = malloc(size ? size : 1);
	if (!p)
		return 0;
	memcpy(p, data, size);
	static struct nfq_tls t;
	check(&t, nfq_tls_client_hello(&t, p, size), size);
	check(&t, nfq_tls_handshake(&t, p, size), size);
	free(p);
	return 0;
}

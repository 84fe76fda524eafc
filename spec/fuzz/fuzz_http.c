/*
 * fuzz_http.c: libFuzzer target for the HTTP request-head parser
 * (src/nfq_http.c), over the input at its exact size: every offset it
 * gives must lie inside the input, and a host must hold no space.
 * Build: make fuzz. Replay without clang: make fuzz-replay.
 */
#include <stdlib.h>
#include <string.h>

#include "nfq_names.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *p = malloc(size ? size : 1);
	if (!p)
		return 0;
	memcpy(p, data, size);
	struct nfq_http h;
	int rc = nfq_http_request(&h, p, size);
	if (rc > 0 || (rc < 0 && !nfq_names_strerror(rc)[0]))
		abort();
	if (rc == 0) {
		if ((size_t)h.path_off + h.path_len > size || h.method_len == 0 || h.path_len == 0 ||
		    (size_t)h.host_off + h.host_len > size || h.head_len > size)
			abort();
		if (h.host_len && (memchr(p + h.host_off, ' ', h.host_len) || p[h.host_off] == '\t'))
			abort();
	}
	free(p);
	return 0;
}

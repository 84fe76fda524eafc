/*
 * nfq_tls.c: the ClientHello that opens a TLS connection (RFC 8446 4.1.2,
 * RFC 5246 7.4.1.2), for its server name (RFC 6066 3), ALPN list (RFC 7301)
 * and supported versions (RFC 8446 4.2.1).
 *
 * From a record stream: the common case, a ClientHello inside its first
 * record, is parsed in place; one spread over several handshake records is
 * gathered into t->scratch first (up to NFQ_TLS_HELLO_MAX bytes). Bytes
 * that end before the ClientHello does give NFQ_NAMES_INCOMPLETE, so a
 * caller with stream bytes can try again when more arrive.
 * Each extension's inner lengths must add up to its own; the three read
 * here may not repeat (RFC 8446 4.2), and a server name may not hold a NUL.
 * spec/fuzz/fuzz_tls.c fuzzes this file.
 */
#include <string.h>

#include "nfq_internal.h"
#include "nfq_names.h"

#define RECORD_HEADER 5
#define RECORD_MAX 16384	/* TLSPlaintext.length, RFC 8446 5.1 */
#define CONTENT_HANDSHAKE 22
#define HANDSHAKE_CLIENT_HELLO 1
#define EXT_SERVER_NAME 0
#define EXT_ALPN 16
#define EXT_SUPPORTED_VERSIONS 43
#define NAME_TYPE_HOST 0

/* RFC 8701: GREASE values are 0x?a?a with both bytes equal. */
static int is_grease(uint16_t v)
{
	return (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff);
}

static int server_name(struct nfq_tls *t, const uint8_t *e, size_t len)
{
	if (t->has_sni)
		return NFQ_NAMES_EEXTENSION;
	/* RFC 6066: a ClientHello for resumption may carry an empty one. */
	t->has_sni = 1;
	if (len == 0)
		return 0;
	if (len < 2 || nfq_get16(e) != len - 2)
		return NFQ_NAMES_ELENGTH;
	int found = 0;
	for (size_t at = 2; at < len;) {
		if (at + 3 > len)
			return NFQ_NAMES_ELENGTH;
		uint8_t type = e[at];
		size_t n = nfq_get16(e + at + 1);
		at += 3;
		if (at + n > len)
			return NFQ_NAMES_ELENGTH;
		if (type == NAME_TYPE_HOST) {
			if (found || n == 0 || memchr(e + at, 0, n))
				return NFQ_NAMES_EEXTENSION;
			if (n >= NFQ_TLS_SNI_MAX)
				return NFQ_NAMES_ENAMELEN;
			memcpy(t->server_name, e + at, n);
			t->server_name[n] = 0;
			t->server_name_len = (uint16_t)n;
			found = 1;
		}
		at += n;
	}
	return 0;
}

static int alpn_ext(struct nfq_tls *t, const uint8_t *e, size_t len)
{
	if (t->has_alpn)
		return NFQ_NAMES_EEXTENSION;
	t->has_alpn = 1;
	if (len < 2 || nfq_get16(e) != len - 2 || len == 2)
		return NFQ_NAMES_ELENGTH;
	for (size_t at = 2; at < len;) {
		size_t n = e[at];
		if (n == 0 || at + 1 + n > len)
			return NFQ_NAMES_ELENGTH;
		if (!t->alpn_cut && t->alpn_len + 1 + n <= NFQ_TLS_ALPN_MAX) {
			memcpy(t->alpn_list + t->alpn_len, e + at, 1 + n);
			t->alpn_len = (uint16_t)(t->alpn_len + 1 + n);
			t->alpn_count++;
		} else {
			t->alpn_cut = 1;
		}
		at += 1 + n;
	}
	return 0;
}

static int supported_versions(struct nfq_tls *t, const uint8_t *e, size_t len)
{
	if (t->has_versions)
		return NFQ_NAMES_EEXTENSION;
	t->has_versions = 1;
	if (len < 3 || e[0] != len - 1 || (e[0] & 1))
		return NFQ_NAMES_ELENGTH;
	uint16_t max = 0;
	for (size_t at = 1; at < len; at += 2) {
		uint16_t v = (uint16_t)nfq_get16(e + at);
		if (t->versions_count < NFQ_TLS_VERSIONS_MAX)
			t->versions[t->versions_count++] = v;
		if (!is_grease(v) && v > max)
			max = v;
	}
	if (max)
		t->max_version = max;
	return 0;
}

/* The ClientHello body b[0..len). */
static int hello_body(struct nfq_tls *t, const uint8_t *b, size_t len)
{
	if (len < 2 + 32 + 1)
		return NFQ_NAMES_ELENGTH;
	t->legacy_version = (uint16_t)nfq_get16(b);
	t->max_version = t->legacy_version;
	size_t at = 2 + 32;
	size_t sid = b[at++];
	if (sid > 32 || at + sid + 2 > len)
		return NFQ_NAMES_ELENGTH;
	at += sid;
	size_t suites = nfq_get16(b + at);
	at += 2;
	if (suites < 2 || (suites & 1) || at + suites + 1 > len)
		return NFQ_NAMES_ELENGTH;
	t->cipher_suites = (uint16_t)(suites / 2);
	at += suites;
	size_t methods = b[at++];
	if (methods < 1 || at + methods > len)
		return NFQ_NAMES_ELENGTH;
	at += methods;
	if (at == len)
		return 0;	/* no extensions: allowed before TLS 1.3 */
	if (at + 2 > len || at + 2 + nfq_get16(b + at) != len)
		return NFQ_NAMES_ELENGTH;
	at += 2;
	while (at < len) {
		if (at + 4 > len)
			return NFQ_NAMES_ELENGTH;
		uint16_t type = (uint16_t)nfq_get16(b + at);
		size_t n = nfq_get16(b + at + 2);
		at += 4;
		if (at + n > len)
			return NFQ_NAMES_ELENGTH;
		int rc = 0;
		if (type == EXT_SERVER_NAME)
			rc = server_name(t, b + at, n);
		else if (type == EXT_ALPN)
			rc = alpn_ext(t, b + at, n);
		else if (type == EXT_SUPPORTED_VERSIONS)
			rc = supported_versions(t, b + at, n);
		if (rc < 0)
			return rc;
		t->extensions++;
		at += n;
	}
	return 0;
}

static void reset(struct nfq_tls *t)
{
	t->record_version = t->legacy_version = t->max_version = 0;
	t->cipher_suites = t->extensions = 0;
	t->server_name_len = t->alpn_len = t->alpn_count = t->versions_count = 0;
	t->has_sni = t->has_alpn = t->has_versions = t->alpn_cut = 0;
	t->hello_len = t->consumed = 0;
	t->server_name[0] = 0;
}

static int handshake(struct nfq_tls *t, const uint8_t *p, size_t len)
{
	if (len < 4)
		return NFQ_NAMES_INCOMPLETE;
	if (p[0] != HANDSHAKE_CLIENT_HELLO)
		return NFQ_NAMES_ENOTHELLO;
	size_t hlen = (size_t)p[1] << 16 | nfq_get16(p + 2);
	if (hlen > NFQ_TLS_HELLO_MAX)
		return NFQ_NAMES_ETOOLONG;
	if (4 + hlen > len)
		return NFQ_NAMES_INCOMPLETE;
	t->hello_len = (uint32_t)hlen;
	return hello_body(t, p + 4, hlen);
}

int nfq_tls_handshake(struct nfq_tls *t, const uint8_t *p, size_t len)
{
	reset(t);
	int rc = handshake(t, p, len);
	if (rc == 0)
		t->consumed = 4 + t->hello_len;
	return rc;
}

/* A record header at p[0..len): its length, or a code. */
static int record(const uint8_t *p, size_t len)
{
	if (len < RECORD_HEADER)
		return NFQ_NAMES_INCOMPLETE;
	if (p[0] != CONTENT_HANDSHAKE)
		return NFQ_NAMES_ENOTHELLO;
	size_t n = nfq_get16(p + 3);
	if (p[1] != 3 || n == 0 || n > RECORD_MAX)
		return NFQ_NAMES_EHEADER;
	return (int)n;
}

int nfq_tls_client_hello(struct nfq_tls *t, const uint8_t *p, size_t len)
{
	reset(t);
	int n = record(p, len);
	if (n < 0)
		return n;
	t->record_version = (uint16_t)nfq_get16(p + 1);
	size_t first = (size_t)n;
	/* The ClientHello inside the first record: parsed where it lies. */
	if (first >= 4 && RECORD_HEADER + first <= len) {
		size_t hlen = (size_t)p[RECORD_HEADER + 1] << 16 | nfq_get16(p + RECORD_HEADER + 2);
		if (4 + hlen <= first) {
			int rc = handshake(t, p + RECORD_HEADER, first);
			if (rc == 0)
				t->consumed = (uint32_t)(RECORD_HEADER + 4 + hlen);
			return rc;
		}
	}
	/* Gathered from as many handshake records as it spans. */
	size_t have = 0, need = 4, at = 0;
	while (have < need) {
		if (at >= len)
			return NFQ_NAMES_INCOMPLETE;
		n = record(p + at, len - at);
		if (n < 0)
			return n;
		at += RECORD_HEADER;
		for (size_t left = (size_t)n; left > 0 && have < need;) {
			if (at >= len)
				return NFQ_NAMES_INCOMPLETE;
			size_t take = left < len - at ? left : len - at;
			if (take > need - have)
				take = need - have;
			memcpy(t->scratch + have, p + at, take);
			have += take;
			at += take;
			left -= take;
			if (need == 4 && have == 4) {
				if (t->scratch[0] != HANDSHAKE_CLIENT_HELLO)
					return NFQ_NAMES_ENOTHELLO;
				size_t hlen = (size_t)t->scratch[1] << 16 | nfq_get16(t->scratch + 2);
				if (hlen > NFQ_TLS_HELLO_MAX)
					return NFQ_NAMES_ETOOLONG;
				need = 4 + hlen;
			}
		}
	}
	int rc = handshake(t, t->scratch, have);
	if (rc == 0)
		t->consumed = (uint32_t)at;
	return rc;
}

/*
 * fuzz_quic.c: libFuzzer target for QUIC client Initials (src/nfq_quic.c).
 * Random bytes almost never decrypt, so most inputs are made into real
 * Initial packets first: this harness derives the keys with OpenSSL's own
 * HKDF (EVP_KDF, a second implementation beside the parser's HMAC one),
 * encrypts the fuzzed frames and protects the header, so that the frame
 * walk, the CRYPTO reassembly and the ClientHello parser all get fuzzed.
 *   byte 0   bit 0: version 2 (else 1); bits 1-2: packet number length - 1;
 *            bit 7: the rest is the packet itself, not frames
 *   byte 1   Destination Connection ID length (mod 21), then the ID
 *   then     the frames (padded with PADDING to the minimum sample size)
 * A packet the harness built must decrypt (no NFQ_NAMES_EDECRYPT).
 * Build: make fuzz. Replay without clang: make fuzz-replay.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

#include "nfq_names.h"

static const uint8_t salt_v1[20] = { 0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17,
				      0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a };
static const uint8_t salt_v2[20] = { 0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93,
				      0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9 };

static void hkdf(int mode, const uint8_t *key, size_t key_len, const uint8_t *salt, size_t salt_len,
		 const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len)
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *ctx = EVP_KDF_CTX_new(kdf);
	char digest[] = "SHA256";
	OSSL_PARAM params[6], *p = params;
	*p++ = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
	*p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, key_len);
	if (salt)
		*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len);
	if (info)
		*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, info_len);
	*p = OSSL_PARAM_construct_end();
	if (!ctx || EVP_KDF_derive(ctx, out, out_len, params) != 1)
		abort();
	EVP_KDF_CTX_free(ctx);
	EVP_KDF_free(kdf);
}

static void expand_label(const uint8_t *secret, const char *label, uint8_t *out, size_t len)
{
	uint8_t info[64];
	size_t n = strlen(label);
	info[0] = 0;
	info[1] = (uint8_t)len;
	info[2] = (uint8_t)(6 + n);
	memcpy(info + 3, "tls13 ", 6);
	memcpy(info + 9, label, n);
	info[9 + n] = 0;
	hkdf(EVP_KDF_HKDF_MODE_EXPAND_ONLY, secret, 32, NULL, 0, info, 10 + n, out, len);
}

/* An Initial holding frames[0..n), encrypted as a client would; its length. */
static size_t build(uint8_t *pkt, int v2, size_t pn_len, const uint8_t *dcid, size_t dcid_len,
		    const uint8_t *frames, size_t n)
{
	uint8_t initial[32], client[32], key[16], iv[12], hp[16];
	hkdf(EVP_KDF_HKDF_MODE_EXTRACT_ONLY, dcid, dcid_len, v2 ? salt_v2 : salt_v1, 20, NULL, 0, initial, 32);
	expand_label(initial, "client in", client, 32);
	expand_label(client, v2 ? "quicv2 key" : "quic key", key, 16);
	expand_label(client, v2 ? "quicv2 iv" : "quic iv", iv, 12);
	expand_label(client, v2 ? "quicv2 hp" : "quic hp", hp, 16);
	size_t at = 0;
	pkt[at++] = (uint8_t)(0xc0 | (v2 ? 0x10 : 0) | (pn_len - 1));
	uint32_t version = v2 ? NFQ_QUIC_V2 : NFQ_QUIC_V1;
	for (int i = 3; i >= 0; i--)
		pkt[at++] = (uint8_t)(version >> (8 * i));
	pkt[at++] = (uint8_t)dcid_len;
	memcpy(pkt + at, dcid, dcid_len);
	at += dcid_len;
	pkt[at++] = 0;	/* no source ID */
	pkt[at++] = 0;	/* no token */
	size_t length = pn_len + n + 16;
	pkt[at++] = (uint8_t)(0x40 | length >> 8);
	pkt[at++] = (uint8_t)length;
	size_t pn_off = at;
	for (size_t i = 0; i < pn_len; i++)
		pkt[at++] = (uint8_t)(i + 1);
	uint8_t nonce[12];
	memcpy(nonce, iv, 12);
	for (size_t i = 0; i < pn_len; i++)
		nonce[11 - i] ^= pkt[pn_off + pn_len - 1 - i];
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	int out;
	if (EVP_EncryptInit_ex(c, EVP_aes_128_gcm(), NULL, key, nonce) != 1 ||
	    EVP_EncryptUpdate(c, NULL, &out, pkt, (int)at) != 1 ||
	    EVP_EncryptUpdate(c, pkt + at, &out, frames, (int)n) != 1 ||
	    EVP_EncryptFinal_ex(c, pkt + at + out, &out) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, pkt + at + n) != 1)
		abort();
	uint8_t mask[32];
	if (EVP_EncryptInit_ex(c, EVP_aes_128_ecb(), NULL, hp, NULL) != 1 ||
	    EVP_EncryptUpdate(c, mask, &out, pkt + pn_off + 4, 16) != 1)
		abort();
	EVP_CIPHER_CTX_free(c);
	pkt[0] ^= mask[0] & 0x0f;
	for (size_t i = 0; i < pn_len; i++)
		pkt[pn_off + i] ^= mask[1 + i];
	return at + n + 16;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct nfq_quic q;
	if (!q.keys && nfq_quic_init(&q) != 0)
		abort();
	if (size < 2)
		return 0;
	if (data[0] & 0x80) {
		uint8_t *p = malloc(size - 1);
		memcpy(p, data + 1, size - 1);
		int rc = nfq_quic_initial(&q, p, size - 1);
		if (rc > 0 || (rc < 0 && !nfq_names_strerror(rc)[0]))
			abort();
		free(p);
		return 0;
	}
	int v2 = data[0] & 1;
	size_t pn_len = (size_t)((data[0] >> 1) & 3) + 1;
	size_t dcid_len = data[1] % 21;
	if (size < 2 + dcid_len)
		return 0;
	const uint8_t *frames = data + 2 + dcid_len;
	size_t n = size - 2 - dcid_len;
	if (n > 16000)
		return 0;
	uint8_t *padded = calloc(1, n + 20);
	memcpy(padded, frames, n);
	if (n < 20)
		n = 20;
	size_t cap = 64 + n + 16;
	uint8_t *pkt = malloc(cap);
	size_t len = build(pkt, v2, pn_len, data + 2, dcid_len, padded, n);
	uint8_t *exact = malloc(len);
	memcpy(exact, pkt, len);
	int rc = nfq_quic_initial(&q, exact, len);
	if (rc > 0 || rc == NFQ_NAMES_EDECRYPT || rc == NFQ_NAMES_ECRYPTO || rc == NFQ_NAMES_EHEADER)
		abort();
	if (rc == 0 && (q.packet_len != len || strlen(q.tls.server_name) != q.tls.server_name_len))
		abort();
	free(exact);
	free(pkt);
	free(padded);
	return 0;
}

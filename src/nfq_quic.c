/*
 * nfq_quic.c: the ClientHello inside a QUIC client Initial packet, for QUIC
 * version 1 (RFC 9000, RFC 9001) and version 2 (RFC 9369).
 *
 * Initial packets are encrypted with keys anyone can derive from the
 * packet's Destination Connection ID (RFC 9001 5.2): HKDF-Extract with the
 * version's salt, then HKDF-Expand-Label for the client's secret, key, IV
 * and header protection key. HKDF (RFC 5869) is two HMAC-SHA256 calls here,
 * through one cached OpenSSL EVP_MAC context; AES-128-ECB (header
 * protection, RFC 9001 5.4.3) and AES-128-GCM (payload, 5.3) go through two
 * cached EVP_CIPHER_CTXs that are only re-keyed per packet. The keys of the
 * last connection ID are kept, so a retransmitted or second Initial of the
 * same connection skips the derivation. No cryptography is written here.
 *
 * Only the first packet of a datagram is read (coalesced packets follow
 * it). Its CRYPTO frames may come in any order and overlap (clients such as
 * Chrome shuffle them); the data is placed by offset in q->crypto and the
 * ClientHello parsed from the bytes that are contiguous from offset 0. One
 * packet is all this sees: a ClientHello continued in a second Initial
 * gives NFQ_NAMES_INCOMPLETE (the header fields are still filled in), and
 * a client Initial sent after the server changed the connection ID does not
 * decrypt (its keys come from the first ID). spec/fuzz/fuzz_quic.c fuzzes
 * this file.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>

#include "nfq_internal.h"
#include "nfq_names.h"

#define SAMPLE_LEN 16
#define TAG_LEN 16
#define SECRET_LEN 32
#define KEY_LEN 16
#define IV_LEN 12
#define MAX_CID 20
#define CRYPTO_CAP (NFQ_TLS_HELLO_MAX + 4)

#define FRAME_PADDING 0x00
#define FRAME_PING 0x01
#define FRAME_ACK 0x02
#define FRAME_ACK_ECN 0x03
#define FRAME_CRYPTO 0x06
#define FRAME_CONNECTION_CLOSE 0x1c

static const uint8_t salt_v1[20] = {
	0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17,
	0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a,
};
static const uint8_t salt_v2[20] = {
	0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93,
	0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9,
};

struct nfq_quic_keys {
	EVP_MAC_CTX *hmac;
	EVP_CIPHER_CTX *ecb;
	EVP_CIPHER_CTX *gcm;
	/* the keys of the last connection ID; keyed: the cipher contexts hold them */
	int valid;
	int keyed;
	uint32_t version;
	uint8_t dcid_len;
	uint8_t dcid[MAX_CID];
	uint8_t key[KEY_LEN];
	uint8_t iv[IV_LEN];
	uint8_t hp[KEY_LEN];
};

int nfq_quic_init(struct nfq_quic *q)
{
	struct nfq_quic_keys *k = calloc(1, sizeof *k);
	if (!k)
		return -1;
	q->keys = k;
	EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	EVP_CIPHER *ecb = EVP_CIPHER_fetch(NULL, "AES-128-ECB", NULL);
	EVP_CIPHER *gcm = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
	int ok = mac && ecb && gcm;
	if (ok) {
		char digest[] = "SHA256";
		OSSL_PARAM params[] = {
			OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
			OSSL_PARAM_construct_end(),
		};
		k->hmac = EVP_MAC_CTX_new(mac);
		k->ecb = EVP_CIPHER_CTX_new();
		k->gcm = EVP_CIPHER_CTX_new();
		ok = k->hmac && k->ecb && k->gcm &&
			EVP_MAC_CTX_set_params(k->hmac, params) == 1 &&
			EVP_EncryptInit_ex2(k->ecb, ecb, NULL, NULL, NULL) == 1 &&
			EVP_CIPHER_CTX_set_padding(k->ecb, 0) == 1 &&
			EVP_DecryptInit_ex2(k->gcm, gcm, NULL, NULL, NULL) == 1;
	}
	/* The contexts hold their own references to the algorithms. */
	EVP_MAC_free(mac);
	EVP_CIPHER_free(ecb);
	EVP_CIPHER_free(gcm);
	if (!ok) {
		nfq_quic_close(q);
		return -1;
	}
	return 0;
}

void nfq_quic_close(struct nfq_quic *q)
{
	struct nfq_quic_keys *k = q->keys;
	if (!k)
		return;
	EVP_MAC_CTX_free(k->hmac);
	EVP_CIPHER_CTX_free(k->ecb);
	EVP_CIPHER_CTX_free(k->gcm);
	OPENSSL_cleanse(k, sizeof *k);
	free(k);
	q->keys = NULL;
}

static int hmac(struct nfq_quic_keys *k, const uint8_t *key, size_t key_len,
		const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len, uint8_t out[SECRET_LEN])
{
	size_t n;
	return EVP_MAC_init(k->hmac, key, key_len, NULL) == 1 && EVP_MAC_update(k->hmac, a, a_len) == 1 &&
		(b_len == 0 || EVP_MAC_update(k->hmac, b, b_len) == 1) &&
		EVP_MAC_final(k->hmac, out, &n, SECRET_LEN) == 1 && n == SECRET_LEN;
}

/* HKDF-Expand-Label (RFC 8446 7.1) with an empty context, for at most one
 * SHA-256 block: T(1) = HMAC(secret, HkdfLabel || 0x01). */
static int expand_label(struct nfq_quic_keys *k, const uint8_t secret[SECRET_LEN], const char *label,
			uint8_t *out, size_t len)
{
	uint8_t info[2 + 1 + 6 + 32 + 1 + 1];
	size_t label_len = strlen(label), n = 0;
	info[n++] = 0;
	info[n++] = (uint8_t)len;
	info[n++] = (uint8_t)(6 + label_len);
	memcpy(info + n, "tls13 ", 6);
	n += 6;
	memcpy(info + n, label, label_len);
	n += label_len;
	info[n++] = 0;		/* context */
	info[n++] = 1;		/* the block counter */
	uint8_t block[SECRET_LEN];
	if (!hmac(k, secret, SECRET_LEN, info, n, NULL, 0, block))
		return 0;
	memcpy(out, block, len);
	OPENSSL_cleanse(block, sizeof block);
	return 1;
}

static int derive(struct nfq_quic_keys *k, uint32_t version, const uint8_t *dcid, size_t dcid_len)
{
	if (k->valid && k->version == version && k->dcid_len == dcid_len && memcmp(k->dcid, dcid, dcid_len) == 0)
		return 1;
	k->valid = k->keyed = 0;
	int v2 = version == NFQ_QUIC_V2;
	uint8_t initial[SECRET_LEN], client[SECRET_LEN];
	/* HKDF-Extract: the salt is the HMAC key, the connection ID the message. */
	int ok = hmac(k, v2 ? salt_v2 : salt_v1, sizeof salt_v1, dcid, dcid_len, NULL, 0, initial) &&
		expand_label(k, initial, "client in", client, SECRET_LEN) &&
		expand_label(k, client, v2 ? "quicv2 key" : "quic key", k->key, KEY_LEN) &&
		expand_label(k, client, v2 ? "quicv2 iv" : "quic iv", k->iv, IV_LEN) &&
		expand_label(k, client, v2 ? "quicv2 hp" : "quic hp", k->hp, KEY_LEN);
	OPENSSL_cleanse(initial, sizeof initial);
	OPENSSL_cleanse(client, sizeof client);
	if (!ok)
		return 0;
	k->version = version;
	k->dcid_len = (uint8_t)dcid_len;
	memcpy(k->dcid, dcid, dcid_len);
	k->valid = 1;
	return 1;
}

/* A variable-length integer (RFC 9000 16) at p[*at..len), or -1. */
static int varint(const uint8_t *p, size_t len, size_t *at, uint64_t *v)
{
	if (*at >= len)
		return -1;
	size_t n = (size_t)1 << (p[*at] >> 6);
	if (n > len - *at)
		return -1;
	uint64_t x = p[*at] & 0x3f;
	for (size_t i = 1; i < n; i++)
		x = x << 8 | p[*at + i];
	*at += n;
	*v = x;
	return 0;
}

struct range {
	uint32_t start;
	uint32_t end;
};

/* Walk the frames of the plaintext f[0..len), placing CRYPTO data by offset. */
static int frames(struct nfq_quic *q, const uint8_t *f, size_t len)
{
	struct range ranges[NFQ_QUIC_MAX_FRAMES];
	size_t nranges = 0;
	uint64_t v, count;
	for (size_t at = 0; at < len;) {
		uint8_t type = f[at++];
		switch (type) {
		case FRAME_PADDING:
		case FRAME_PING:
			break;
		case FRAME_ACK:
		case FRAME_ACK_ECN:
			/* largest acknowledged, delay, range count, first range, ranges */
			if (varint(f, len, &at, &v) || varint(f, len, &at, &v) || varint(f, len, &at, &count) ||
			    varint(f, len, &at, &v))
				return NFQ_NAMES_EFRAME;
			if (count > len)
				return NFQ_NAMES_EFRAME;
			for (uint64_t i = 0; i < 2 * count + (type == FRAME_ACK_ECN ? 3 : 0); i++)
				if (varint(f, len, &at, &v))
					return NFQ_NAMES_EFRAME;
			break;
		case FRAME_CONNECTION_CLOSE:
			if (varint(f, len, &at, &v) || varint(f, len, &at, &v) || varint(f, len, &at, &v) ||
			    v > len - at)
				return NFQ_NAMES_EFRAME;
			at += (size_t)v;
			break;
		case FRAME_CRYPTO: {
			uint64_t offset, n;
			if (varint(f, len, &at, &offset) || varint(f, len, &at, &n) || n > len - at)
				return NFQ_NAMES_EFRAME;
			if (++q->crypto_frames > NFQ_QUIC_MAX_FRAMES)
				return NFQ_NAMES_ETOOLONG;
			if (offset < CRYPTO_CAP && n > 0) {
				size_t take = n < CRYPTO_CAP - offset ? (size_t)n : CRYPTO_CAP - (size_t)offset;
				memcpy(q->crypto + offset, f + at, take);
				ranges[nranges].start = (uint32_t)offset;
				ranges[nranges].end = (uint32_t)(offset + take);
				nranges++;
			}
			at += (size_t)n;
			break;
		}
		default:
			return NFQ_NAMES_EFRAME;
		}
	}
	/* Sort by start (a few frames at most), then the prefix they cover. */
	for (size_t i = 1; i < nranges; i++) {
		struct range r = ranges[i];
		size_t j = i;
		for (; j > 0 && ranges[j - 1].start > r.start; j--)
			ranges[j] = ranges[j - 1];
		ranges[j] = r;
	}
	uint32_t covered = 0;
	for (size_t i = 0; i < nranges && ranges[i].start <= covered; i++)
		if (ranges[i].end > covered)
			covered = ranges[i].end;
	q->crypto_len = covered;
	return 0;
}

int nfq_quic_initial(struct nfq_quic *q, const uint8_t *p, size_t len)
{
	q->version = q->packet_number = 0;
	q->dcid_len = q->scid_len = 0;
	q->crypto_frames = 0;
	q->token_len = q->packet_len = q->crypto_len = 0;
	q->tls.server_name_len = 0;
	q->tls.server_name[0] = 0;
	q->tls.has_sni = q->tls.has_alpn = 0;
	q->tls.alpn_len = q->tls.alpn_count = 0;
	struct nfq_quic_keys *k = q->keys;
	if (!k)
		return NFQ_NAMES_ECRYPTO;
	if (len < 7)
		return len && !(p[0] & 0x80) ? NFQ_NAMES_ENOTINITIAL : NFQ_NAMES_INCOMPLETE;
	if (!(p[0] & 0x80))
		return NFQ_NAMES_ENOTINITIAL;
	uint32_t version = nfq_get32(p + 1);
	if (version == 0)
		return NFQ_NAMES_ENOTINITIAL;	/* version negotiation */
	if (version != NFQ_QUIC_V1 && version != NFQ_QUIC_V2)
		return NFQ_NAMES_EVERSION;
	q->version = version;
	if (((p[0] >> 4) & 3) != (version == NFQ_QUIC_V2 ? 1 : 0))
		return NFQ_NAMES_ENOTINITIAL;
	size_t at = 5;
	uint8_t dcid_len = p[at++];
	if (dcid_len > MAX_CID)
		return NFQ_NAMES_EHEADER;
	if (at + dcid_len + 1 > len)
		return NFQ_NAMES_INCOMPLETE;
	memcpy(q->dcid, p + at, dcid_len);
	q->dcid_len = dcid_len;
	at += dcid_len;
	uint8_t scid_len = p[at++];
	if (scid_len > MAX_CID)
		return NFQ_NAMES_EHEADER;
	if (at + scid_len > len)
		return NFQ_NAMES_INCOMPLETE;
	memcpy(q->scid, p + at, scid_len);
	q->scid_len = scid_len;
	at += scid_len;
	uint64_t token, length;
	if (varint(p, len, &at, &token) || token > len - at)
		return NFQ_NAMES_INCOMPLETE;
	q->token_len = (uint32_t)token;
	at += (size_t)token;
	if (varint(p, len, &at, &length))
		return NFQ_NAMES_INCOMPLETE;
	size_t pn_off = at;
	/* The sample starts 4 bytes past the packet number's start (5.4.2). */
	if (length < 4 + SAMPLE_LEN)
		return NFQ_NAMES_EHEADER;
	if (length > NFQ_QUIC_MAX_PACKET || pn_off + length > NFQ_QUIC_MAX_PACKET)
		return NFQ_NAMES_ETOOLONG;
	if (length > len - pn_off)
		return NFQ_NAMES_INCOMPLETE;
	q->packet_len = (uint32_t)(pn_off + length);
	if (!derive(k, version, q->dcid, dcid_len))
		return NFQ_NAMES_ECRYPTO;

	/* Key schedules are set up once per connection ID, not per packet. */
	if (!k->keyed) {
		if (EVP_EncryptInit_ex2(k->ecb, NULL, k->hp, NULL, NULL) != 1 ||
		    EVP_DecryptInit_ex2(k->gcm, NULL, k->key, NULL, NULL) != 1)
			return NFQ_NAMES_ECRYPTO;
		k->keyed = 1;
	}
	uint8_t mask[SAMPLE_LEN + 16];
	int n;
	if (EVP_EncryptUpdate(k->ecb, mask, &n, p + pn_off + 4, SAMPLE_LEN) != 1 || n != SAMPLE_LEN)
		return NFQ_NAMES_ECRYPTO;
	/* The unprotected header is the AEAD's associated data: built in plain[]. */
	uint8_t *header = q->plain;
	memcpy(header, p, pn_off);
	header[0] = (uint8_t)(p[0] ^ (mask[0] & 0x0f));
	size_t pn_len = (size_t)(header[0] & 3) + 1;
	uint64_t pn = 0;
	for (size_t i = 0; i < pn_len; i++) {
		header[pn_off + i] = p[pn_off + i] ^ mask[1 + i];
		pn = pn << 8 | header[pn_off + i];
	}
	q->packet_number = (uint32_t)pn;
	size_t hdr_len = pn_off + pn_len;
	uint8_t nonce[IV_LEN];
	memcpy(nonce, k->iv, IV_LEN);
	for (size_t i = 0; i < 8; i++)
		nonce[IV_LEN - 1 - i] ^= (uint8_t)(pn >> (8 * i));

	const uint8_t *ct = p + hdr_len;
	size_t ct_len = (size_t)length - pn_len - TAG_LEN;
	uint8_t *plain = q->plain + hdr_len;
	int out, fin;
	if (EVP_DecryptInit_ex2(k->gcm, NULL, NULL, nonce, NULL) != 1 ||
	    EVP_DecryptUpdate(k->gcm, NULL, &out, header, (int)hdr_len) != 1 ||
	    EVP_DecryptUpdate(k->gcm, plain, &out, ct, (int)ct_len) != 1 ||
	    EVP_CIPHER_CTX_ctrl(k->gcm, EVP_CTRL_GCM_SET_TAG, TAG_LEN, (void *)(ct + ct_len)) != 1)
		return NFQ_NAMES_ECRYPTO;
	if (EVP_DecryptFinal_ex(k->gcm, plain + out, &fin) != 1)
		return NFQ_NAMES_EDECRYPT;
	int rc = frames(q, plain, ct_len);
	if (rc < 0)
		return rc;
	if (q->crypto_frames == 0)
		return NFQ_NAMES_ENOTHELLO;
	return nfq_tls_handshake(&q->tls, q->crypto, q->crypto_len);
}

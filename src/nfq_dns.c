/*
 * nfq_dns.c: DNS messages (RFC 1035 4.1) read in place, and the answer a
 * blocklist gives a query.
 *
 * Names are decoded into text: labels joined by dots, case preserved. A
 * compression pointer must point strictly backward of itself (compressors
 * only ever point at names already written), so a walk cannot loop, and
 * every jump is bounded by the message; a name's wire form may not pass
 * 255 bytes (RFC 1035 2.3.4), which bounds the text. A label holding a dot
 * or a NUL byte is refused: its text would read as another name. Extended
 * label types (0x40, 0x80) are refused as RFC 6891 obsoleted them.
 *
 * Running out of bytes gives NFQ_NAMES_INCOMPLETE (a message cut by the
 * queue's copy range, or a TCP stream not yet whole); anything else wrong
 * gives a malformed code. spec/fuzz/fuzz_dns.c fuzzes both halves.
 */
#include <string.h>

#include "nfq_internal.h"
#include "nfq_names.h"

#define HEADER_LEN 12
#define WIRE_NAME_MAX 255
#define MAX_HOPS 127
#define RR_FIXED 10		/* type, class, TTL, rdlength */
#define FLAG_QR 0x8000
#define FLAG_RD 0x0100
#define FLAG_RA 0x0080
#define OPCODE(f) (((f) >> 11) & 15)
#define CLASS_IN 1
#define IPPROTO_UDP_ 17

/*
 * Decode the name at msg[*pos] into out (NFQ_DNS_NAME_MAX bytes, NUL-
 * terminated) and move *pos past its wire form where it starts (a pointer
 * ends it there). Returns the text length or a code; *labels counts labels.
 */
static int read_name(const uint8_t *msg, size_t len, size_t *pos, char *out, uint16_t *labels)
{
	size_t at = *pos, end = 0, text = 0, wire = 1;
	int jumped = 0, hops = 0;
	uint16_t n = 0;
	for (;;) {
		if (at >= len)
			return NFQ_NAMES_INCOMPLETE;
		uint8_t b = msg[at];
		if ((b & 0xc0) == 0xc0) {
			if (at + 2 > len)
				return NFQ_NAMES_INCOMPLETE;
			size_t target = (size_t)(b & 0x3f) << 8 | msg[at + 1];
			if (target >= at || target < HEADER_LEN || ++hops > MAX_HOPS)
				return NFQ_NAMES_EPOINTER;
			if (!jumped)
				end = at + 2;
			jumped = 1;
			at = target;
			continue;
		}
		if (b & 0xc0)
			return NFQ_NAMES_ELABEL;
		if (b == 0) {
			if (!jumped)
				end = at + 1;
			break;
		}
		wire += (size_t)b + 1;
		if (wire > WIRE_NAME_MAX)
			return NFQ_NAMES_ENAMELEN;
		if (at + 1 + b > len)
			return NFQ_NAMES_INCOMPLETE;
		const uint8_t *label = msg + at + 1;
		if (memchr(label, '.', b) || memchr(label, 0, b))
			return NFQ_NAMES_ELABEL;
		if (text)
			out[text++] = '.';
		memcpy(out + text, label, b);
		text += b;
		n++;
		at += 1 + (size_t)b;
	}
	out[text] = 0;
	*pos = end;
	if (labels)
		*labels = n;
	return (int)text;
}

/* Step over the name at msg[*pos] without reading where its pointer goes:
 * questions after the first cost no more than their own bytes. */
static int skip_name(const uint8_t *msg, size_t len, size_t *pos)
{
	size_t at = *pos;
	for (;;) {
		if (at >= len)
			return NFQ_NAMES_INCOMPLETE;
		uint8_t b = msg[at];
		if ((b & 0xc0) == 0xc0) {
			if (at + 2 > len)
				return NFQ_NAMES_INCOMPLETE;
			*pos = at + 2;
			return 0;
		}
		if (b & 0xc0)
			return NFQ_NAMES_ELABEL;
		at += 1 + (size_t)b;
		if (b == 0) {
			*pos = at;
			return 0;
		}
	}
}

static int parse(struct nfq_dns *d, const uint8_t *msg, size_t len)
{
	d->msg = msg;
	d->msg_len = (uint32_t)(len > UINT32_MAX ? UINT32_MAX : len);
	d->qname_len = d->labels = 0;
	d->qname[0] = 0;
	d->qtype = d->qclass = 0;
	d->answers_read = 0;
	d->an_name_len = 0;
	d->an_name[0] = 0;
	if (len > 65535)
		return NFQ_NAMES_ETOOLONG;
	if (len < HEADER_LEN)
		return NFQ_NAMES_INCOMPLETE;
	d->id = (uint16_t)nfq_get16(msg);
	d->flags = (uint16_t)nfq_get16(msg + 2);
	d->qdcount = (uint16_t)nfq_get16(msg + 4);
	d->ancount = (uint16_t)nfq_get16(msg + 6);
	d->nscount = (uint16_t)nfq_get16(msg + 8);
	d->arcount = (uint16_t)nfq_get16(msg + 10);
	size_t pos = HEADER_LEN;
	for (uint32_t i = 0; i < d->qdcount; i++) {
		int n = i ? skip_name(msg, len, &pos) : read_name(msg, len, &pos, d->qname, &d->labels);
		if (n < 0)
			return n;
		if (pos + 4 > len)
			return NFQ_NAMES_INCOMPLETE;
		if (i == 0) {
			d->qname_len = (uint16_t)n;
			d->qtype = (uint16_t)nfq_get16(msg + pos);
			d->qclass = (uint16_t)nfq_get16(msg + pos + 2);
			d->question_end = (uint32_t)(pos + 4);
		}
		pos += 4;
	}
	if (d->qdcount == 0)
		d->question_end = HEADER_LEN;
	d->next_rr = (uint32_t)pos;
	return 0;
}

int nfq_dns_parse(struct nfq_dns *d, const uint8_t *msg, size_t len)
{
	int rc = parse(d, msg, len);
	if (rc < 0)
		d->ancount = 0;	/* the answer iterator of a result kept from before stops */
	return rc;
}

int nfq_dns_next_answer(struct nfq_dns *d)
{
	if (d->answers_read >= d->ancount)
		return 0;
	size_t pos = d->next_rr, len = d->msg_len;
	int n = read_name(d->msg, len, &pos, d->an_name, NULL);
	if (n < 0)
		return n;
	if (pos + RR_FIXED > len)
		return NFQ_NAMES_INCOMPLETE;
	const uint8_t *rr = d->msg + pos;
	uint16_t rdlength = (uint16_t)nfq_get16(rr + 8);
	if (pos + RR_FIXED + rdlength > len)
		return NFQ_NAMES_INCOMPLETE;
	d->an_name_len = (uint16_t)n;
	d->an_type = (uint16_t)nfq_get16(rr);
	d->an_class = (uint16_t)nfq_get16(rr + 2);
	d->an_ttl = nfq_get32(rr + 4);
	d->an_rdlength = rdlength;
	d->an_rdata = (uint32_t)(pos + RR_FIXED);
	d->next_rr = (uint32_t)(pos + RR_FIXED + rdlength);
	d->answers_read++;
	return 1;
}

/* The name as wire labels, from its text (no label holds a dot). */
static size_t put_name(uint8_t *out, const char *name, size_t len)
{
	size_t o = 0, start = 0;
	for (size_t i = 0; i <= len; i++) {
		if (i == len || name[i] == '.') {
			if (i > start) {
				out[o++] = (uint8_t)(i - start);
				memcpy(out + o, name + start, i - start);
				o += i - start;
			}
			start = i + 1;
		}
	}
	out[o++] = 0;
	return o;
}

int nfq_dns_reply_build(uint8_t *out, size_t cap, const uint8_t *pkt, size_t len,
			uint32_t rcode, uint32_t flags, uint32_t ttl)
{
	if (!pkt || len < 20 || rcode > 15)
		return rcode > 15 ? NFQ_NAMES_EHEADER : NFQ_NAMES_ENOTUDP;
	int v6 = pkt[0] >> 4 == 6;
	size_t iplen = v6 ? 40 + (size_t)(len >= 40 ? nfq_get16(pkt + 4) : 0) : nfq_get16(pkt + 2);
	uint8_t proto;
	int l4 = nfq_transport_offset(pkt, len, &proto);
	if (l4 < 0 || proto != IPPROTO_UDP_ || iplen > len || (size_t)l4 + 8 > iplen)
		return NFQ_NAMES_ENOTUDP;
	if (!v6 && (nfq_get16(pkt + 6) & 0x3fff))
		return NFQ_NAMES_ENOTUDP;	/* a fragment */
	const uint8_t *udp = pkt + l4;
	size_t udplen = nfq_get16(udp + 4);
	if (udplen < 8 || (size_t)l4 + udplen > iplen)
		return NFQ_NAMES_ENOTUDP;
	struct nfq_dns q;
	int rc = nfq_dns_parse(&q, udp + 8, udplen - 8);
	if (rc < 0)
		return rc;
	if ((q.flags & FLAG_QR) || OPCODE(q.flags) != 0 || q.qdcount != 1)
		return NFQ_NAMES_ENOTQUERY;
	int sinkhole = (flags & NFQ_DNS_REPLY_SINKHOLE) && q.qclass == CLASS_IN &&
		(q.qtype == NFQ_DNS_TYPE_A || q.qtype == NFQ_DNS_TYPE_AAAA);
	size_t addr_len = q.qtype == NFQ_DNS_TYPE_A ? 4 : 16;
	size_t hlen = v6 ? 40 : 20;
	size_t wire_name = q.qname_len ? (size_t)q.qname_len + 2 : 1;
	size_t total = hlen + 8 + HEADER_LEN + wire_name + 4 +
		(sinkhole ? 2 + RR_FIXED + addr_len : 0);
	if (cap < total)
		return NFQ_NAMES_EROOM;
	memset(out, 0, total);
	/* IP: from the query's destination to its source, TTL or hop limit 64. */
	if (v6) {
		out[0] = 0x60;
		out[6] = IPPROTO_UDP_;
		out[7] = 64;
		memcpy(out + 8, pkt + 24, 16);
		memcpy(out + 24, pkt + 8, 16);
	} else {
		out[0] = 0x45;
		nfq_put16(out + 6, 0x4000);	/* DF */
		out[8] = 64;
		out[9] = IPPROTO_UDP_;
		memcpy(out + 12, pkt + 16, 4);
		memcpy(out + 16, pkt + 12, 4);
	}
	uint8_t *u = out + hlen;
	memcpy(u, udp + 2, 2);
	memcpy(u + 2, udp, 2);
	uint8_t *m = u + 8;
	nfq_put16(m, q.id);
	nfq_put16(m + 2, FLAG_QR | (q.flags & FLAG_RD) | FLAG_RA | (sinkhole ? 0 : rcode));
	nfq_put16(m + 4, 1);
	nfq_put16(m + 6, sinkhole ? 1 : 0);
	size_t o = HEADER_LEN + put_name(m + HEADER_LEN, q.qname, q.qname_len);
	nfq_put16(m + o, q.qtype);
	nfq_put16(m + o + 2, q.qclass);
	o += 4;
	if (sinkhole) {
		nfq_put16(m + o, 0xc000 | HEADER_LEN);	/* the question's name */
		nfq_put16(m + o + 2, q.qtype);
		nfq_put16(m + o + 4, CLASS_IN);
		nfq_put32(m + o + 6, ttl);
		nfq_put16(m + o + 10, (uint32_t)addr_len);
		o += 2 + RR_FIXED + addr_len;	/* the address: zeros */
	}
	nfq_put16(u + 4, (uint32_t)(8 + o));
	/* IP lengths, the IPv4 header checksum and the UDP checksum. */
	if (nfq_fix_checksums(out, total) != 0)
		return NFQ_NAMES_ENOTUDP;
	return (int)total;
}

/*
 * nfq_names.c: what the name parsers share: the words for their codes, and
 * where a packet's UDP or TCP payload starts.
 */
#include "nfq_internal.h"
#include "nfq_names.h"

#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17

const char *nfq_names_strerror(int code)
{
	switch (code) {
	case NFQ_NAMES_INCOMPLETE:
		return "incomplete";
	case NFQ_NAMES_EHEADER:
		return "malformed: a header field out of range";
	case NFQ_NAMES_ELABEL:
		return "malformed: a DNS label of a reserved type, or holding a dot or a NUL byte";
	case NFQ_NAMES_EPOINTER:
		return "malformed: a DNS compression pointer that does not point back into the message";
	case NFQ_NAMES_ENAMELEN:
		return "malformed: a name longer than 255 bytes";
	case NFQ_NAMES_ELENGTH:
		return "malformed: a length that runs past the field holding it";
	case NFQ_NAMES_ENOTHELLO:
		return "malformed: not a TLS handshake record holding a ClientHello";
	case NFQ_NAMES_EEXTENSION:
		return "malformed: a TLS extension that repeats or contradicts itself";
	case NFQ_NAMES_ETOOLONG:
		return "malformed: longer than the parser takes (16384-byte ClientHello, 64 CRYPTO frames)";
	case NFQ_NAMES_ENOTINITIAL:
		return "malformed: not a QUIC long-header Initial packet";
	case NFQ_NAMES_EVERSION:
		return "malformed: a QUIC version other than 1 and 2";
	case NFQ_NAMES_EDECRYPT:
		return "malformed: the QUIC payload does not decrypt with the Initial keys";
	case NFQ_NAMES_EFRAME:
		return "malformed: a QUIC frame that an Initial packet may not carry, or one cut short";
	case NFQ_NAMES_ECRYPTO:
		return "malformed: no QUIC crypto context (OpenSSL failed to set one up)";
	case NFQ_NAMES_EREQUEST:
		return "malformed: not an HTTP/1.0 or HTTP/1.1 request line";
	case NFQ_NAMES_EHEADERLINE:
		return "malformed: an HTTP header line that is not one, a bad Host value, or a second Host";
	case NFQ_NAMES_ENOTQUERY:
		return "malformed: not a standard DNS query with one question";
	case NFQ_NAMES_ENOTUDP:
		return "malformed: not a whole IPv4 or IPv6 UDP datagram";
	case NFQ_NAMES_EROOM:
		return "malformed: the answer does not fit in the buffer";
	}
	return "malformed: unknown code";
}

int nfq_names_payload(const uint8_t *pkt, size_t len, uint32_t *off, uint32_t *plen)
{
	uint8_t proto;
	int l4 = nfq_transport_offset(pkt, len, &proto);
	if (l4 < 0)
		return -1;
	size_t end = len;
	if (pkt[0] >> 4 == 4 && nfq_get16(pkt + 2) < end)
		end = nfq_get16(pkt + 2);
	else if (pkt[0] >> 4 == 6 && 40 + (size_t)nfq_get16(pkt + 4) < end)
		end = 40 + (size_t)nfq_get16(pkt + 4);
	size_t at = (size_t)l4, hlen;
	if (proto == IPPROTO_UDP_) {
		hlen = 8;
		if (at + 8 <= end && at + nfq_get16(pkt + at + 4) < end && nfq_get16(pkt + at + 4) >= 8)
			end = at + nfq_get16(pkt + at + 4);
	} else if (proto == IPPROTO_TCP_) {
		if (at + 13 > end)
			return -1;
		hlen = (size_t)(pkt[at + 12] >> 4) * 4;
		if (hlen < 20)
			return -1;
	} else {
		return -1;
	}
	if (at + hlen > end)
		return -1;
	*off = (uint32_t)(at + hlen);
	*plen = (uint32_t)(end - at - hlen);
	return proto;
}

/*
 * nfq_headers.c: IP and transport headers inside a payload: finding the
 * transport header and setting lengths and checksums after an edit. Every
 * read is bounded by len: the payload may be cut by range, or forged.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "nfq_internal.h"

enum {
	PROTO_HOPOPTS = 0, PROTO_ICMP = 1, PROTO_TCP = 6, PROTO_UDP = 17,
	PROTO_ROUTING = 43, PROTO_FRAGMENT = 44, PROTO_AH = 51,
	PROTO_ICMPV6 = 58, PROTO_DSTOPTS = 60,
};

/* IPv6 extension headers followed before giving up. */
#define MAX_EXT_HEADERS 8

/*
 * Where the transport header starts and its protocol, past IPv6 extension
 * headers; -1 if no whole one is there. *fragment says whether the packet is
 * a fragment (more fragments follow, or a nonzero offset): a first fragment
 * carries the transport header, but not the whole datagram its length and
 * checksum describe. The IPv4 total length is not checked: fix_checksums()
 * sets it.
 */
static int locate_transport(const uint8_t *ip, size_t len, uint8_t *protocol, int *fragment)
{
	*fragment = 0;
	if (!ip || len < 1)
		return -1;
	if (ip[0] >> 4 == 4) {
		size_t ihl = (size_t)(ip[0] & 15) * 4;
		if (len < 20 || ihl < 20 || ihl > len)
			return -1;
		unsigned frag = (unsigned)(ip[6] << 8 | ip[7]);
		*fragment = (frag & 0x3fff) != 0;	/* MF, or an offset */
		/* Only the first fragment carries the transport header. */
		if (frag & 0x1fff)
			return -1;
		*protocol = ip[9];
		return (int)ihl;
	}
	if (ip[0] >> 4 == 6 && len >= 40) {
		uint8_t next = ip[6];
		size_t off = 40;
		for (int i = 0; i < MAX_EXT_HEADERS; i++) {
			if (next != PROTO_HOPOPTS && next != PROTO_ROUTING &&
			    next != PROTO_DSTOPTS && next != PROTO_FRAGMENT && next != PROTO_AH) {
				if (off > len)
					return -1;
				*protocol = next;
				return (int)off;
			}
			if (off + 8 > len)
				return -1;
			size_t ext_len;
			if (next == PROTO_FRAGMENT) {
				unsigned frag = (unsigned)(ip[off + 2] << 8 | ip[off + 3]);
				/* An atomic fragment (offset 0, no M flag) is a whole datagram. */
				*fragment = (frag & 0xfff9) != 0;
				if (frag & 0xfff8)
					return -1;
				ext_len = 8;
			} else if (next == PROTO_AH) {
				ext_len = ((size_t)ip[off + 1] + 2) * 4;
			} else {
				ext_len = ((size_t)ip[off + 1] + 1) * 8;
			}
			next = ip[off];
			off += ext_len;
		}
	}
	return -1;
}

int nfq_transport_offset(const uint8_t *ip, size_t len, uint8_t *protocol)
{
	int fragment;
	int off = locate_transport(ip, len, protocol, &fragment);
	/* An IPv4 total length shorter than its own header is a bad length. */
	if (off > 0 && ip[0] >> 4 == 4 && (size_t)(ip[2] << 8 | ip[3]) < (size_t)off)
		return -1;
	return off;
}

int nfq_describe(const uint8_t *data, uint32_t len, char *buf, uint32_t buflen)
{
	static const char *const names[256] = {
		[PROTO_ICMP] = "ICMP", [2] = "IGMP", [PROTO_TCP] = "TCP", [PROTO_UDP] = "UDP",
		[47] = "GRE", [50] = "ESP", [PROTO_AH] = "AH", [PROTO_ICMPV6] = "ICMPv6", [132] = "SCTP",
	};
	int proto = -1;
	if (len >= 20 && data[0] >> 4 == 4) {
		proto = data[9];
	} else if (len >= 40 && data[0] >> 4 == 6) {
		/* Name the transport even of a fragment: step over the usual extensions. */
		uint32_t next = data[6], off = 40;
		while ((next == PROTO_HOPOPTS || next == PROTO_ROUTING || next == PROTO_DSTOPTS) &&
		       off + 8 <= len) {
			next = data[off];
			off += 8 * ((uint32_t)data[off + 1] + 1);
		}
		if (next == PROTO_FRAGMENT && off + 8 <= len)
			next = data[off];
		proto = (int)next;
	}
	if (proto < 0)
		return snprintf(buf, buflen, "unknown protocol packet, %u bytes", len);
	if (names[proto])
		return snprintf(buf, buflen, "%s packet, %u bytes", names[proto], len);
	return snprintf(buf, buflen, "protocol %d packet, %u bytes", proto, len);
}

int nfq_fix_checksums(uint8_t *ip, size_t len)
{
	uint8_t proto = 0;
	int fragment;
	int off = locate_transport(ip, len, &proto, &fragment);
	int v4 = len >= 20 && ip[0] >> 4 == 4;
	uint32_t pseudo = 0;
	size_t l4_len = off >= 0 ? len - (size_t)off : 0;

	if (v4) {
		size_t ihl = (size_t)(ip[0] & 15) * 4;
		if (ihl < 20 || ihl > len || len > 65535) {
			errno = EINVAL;
			return -1;
		}
		nfq_put16(ip + 2, (uint16_t)len);
		nfq_put16(ip + 10, 0);
		nfq_put16(ip + 10, nfq_fold(nfq_sum16(ip, ihl, 0)));
		pseudo = nfq_sum16(ip + 12, 8, 0) + proto + (uint32_t)l4_len;
	} else if (len >= 40 && ip[0] >> 4 == 6) {
		if (len - 40 > 65535) {
			errno = EINVAL;
			return -1;
		}
		nfq_put16(ip + 4, (uint16_t)(len - 40));
		pseudo = nfq_sum16(ip + 8, 32, 0) + proto + (uint32_t)l4_len;
	} else {
		errno = EINVAL;
		return -1;
	}
	/* A fragment holds part of a datagram: its transport length and
	 * checksum describe bytes this packet does not have. */
	if (off < 0 || fragment)
		return 0;

	uint8_t *l4 = ip + off;
	size_t csum_at;
	switch (proto) {
	case PROTO_UDP:
		if (l4_len < 8)
			return 0;
		nfq_put16(l4 + 4, (uint16_t)l4_len);
		csum_at = 6;
		break;
	case PROTO_TCP:
		if (l4_len < 20)
			return 0;
		csum_at = 16;
		break;
	case PROTO_ICMPV6:
		if (l4_len < 4)
			return 0;
		csum_at = 2;
		break;
	case PROTO_ICMP:
		if (l4_len < 4)
			return 0;
		csum_at = 2;
		pseudo = 0;	/* ICMPv4 sums its own message only */
		break;
	default:
		return 0;
	}
	nfq_put16(l4 + csum_at, 0);
	uint16_t csum = nfq_fold(nfq_sum16(l4, l4_len, pseudo));
	if (proto == PROTO_UDP && csum == 0)
		csum = 0xffff;	/* 0 would mean "no checksum" */
	nfq_put16(l4 + csum_at, csum);
	return 0;
}

/* pcap link types (DLT_*) whose frames carry IP packets we can find. */
enum {
	LINK_ETHERNET = 1, LINK_RAW = 12, LINK_RAW_OPENBSD = 14, LINK_RAW_LINKTYPE = 101,
	LINK_LINUX_SLL = 113, LINK_IPV4 = 228, LINK_IPV6 = 229, LINK_LINUX_SLL2 = 276,
};

const uint8_t *nfq_link_payload(int linktype, const uint8_t *frame, uint32_t caplen,
			    uint32_t *iplen, uint16_t *proto, struct nfq_packet *meta)
{
	uint32_t off;
	uint16_t type;
	switch (linktype) {
	case LINK_ETHERNET:
		if (caplen < 14)
			return NULL;
		type = (uint16_t)(frame[12] << 8 | frame[13]);
		off = 14;
		if ((type == 0x8100 || type == 0x88a8) && caplen >= 18) {
			type = (uint16_t)(frame[16] << 8 | frame[17]);
			off = 18;
		}
		memcpy(meta->hw_addr, frame + 6, 6);
		meta->hw_addrlen = 6;
		meta->flags |= NFQ_PF_HW;
		break;
	case LINK_LINUX_SLL: {
		if (caplen < 16)
			return NULL;
		uint16_t halen = (uint16_t)(frame[4] << 8 | frame[5]);
		type = (uint16_t)(frame[14] << 8 | frame[15]);
		off = 16;
		if (halen > 0 && halen <= 8) {
			memcpy(meta->hw_addr, frame + 6, halen);
			meta->hw_addrlen = halen;
			meta->flags |= NFQ_PF_HW;
		}
		break;
	}
	case LINK_LINUX_SLL2: {
		if (caplen < 20)
			return NULL;
		type = (uint16_t)(frame[0] << 8 | frame[1]);
		uint8_t halen = frame[11];
		off = 20;
		if (halen > 0 && halen <= 8) {
			memcpy(meta->hw_addr, frame + 12, halen);
			meta->hw_addrlen = halen;
			meta->flags |= NFQ_PF_HW;
		}
		break;
	}
	case LINK_RAW:
	case LINK_RAW_OPENBSD:
	case LINK_RAW_LINKTYPE:
	case LINK_IPV4:
	case LINK_IPV6:
		if (caplen < 1)
			return NULL;
		type = frame[0] >> 4 == 6 ? 0x86dd : 0x0800;
		off = 0;
		break;
	default:
		return NULL;
	}
	if ((type != 0x0800 && type != 0x86dd) || off >= caplen)
		return NULL;
	*iplen = caplen - off;
	*proto = type;
	return frame + off;
}


/*
 * nfq_names.h: the names a packet asks for, read without copies of its
 * bytes: DNS messages (nfq_dns.c), TLS ClientHellos (nfq_tls.c), QUIC client
 * Initials (nfq_quic.c), HTTP/1.x request heads (nfq_http.c), and the DNS
 * answer a blocklist sends back (nfq_dns.c).
 *
 * Every parser fills a result struct the caller owns (lua/nfq/names.lua
 * makes one of each per Lua state) and allocates nothing. Names are copied
 * into the struct, so a result stays readable after its input is gone; the
 * HTTP fields are offsets into the input, which the caller keeps.
 * A parser returns 0, or a negative NFQ_NAMES_E* code that
 * nfq_names_strerror() turns into a reason ("incomplete", "malformed: ...").
 */
#ifndef NFQ_NAMES_H
#define NFQ_NAMES_H

#include <stddef.h>
#include <stdint.h>

#pragma GCC visibility push(default)
/* BEGIN CDEF */
/* Why a parser gave no result (nfq_names_strerror() says it in words). */
enum {
	NFQ_NAMES_INCOMPLETE = -1,	/* the message goes on past the bytes given */
	NFQ_NAMES_EHEADER = -2,		/* a header field out of range */
	NFQ_NAMES_ELABEL = -3,		/* a DNS label of a reserved kind, or holding a dot */
	NFQ_NAMES_EPOINTER = -4,	/* a DNS compression pointer not strictly backward */
	NFQ_NAMES_ENAMELEN = -5,	/* a name longer than 255 bytes */
	NFQ_NAMES_ELENGTH = -6,		/* a length field that runs past its enclosing one */
	NFQ_NAMES_ENOTHELLO = -7,	/* TLS: not a handshake record, or not a ClientHello */
	NFQ_NAMES_EEXTENSION = -8,	/* TLS: an extension that contradicts itself or repeats */
	NFQ_NAMES_ETOOLONG = -9,	/* longer than this parser takes */
	NFQ_NAMES_ENOTINITIAL = -10,	/* QUIC: not a long-header Initial packet */
	NFQ_NAMES_EVERSION = -11,	/* QUIC: a version other than 1 and 2 */
	NFQ_NAMES_EDECRYPT = -12,	/* QUIC: the payload does not decrypt (wrong tag) */
	NFQ_NAMES_EFRAME = -13,		/* QUIC: a frame an Initial may not carry, or cut */
	NFQ_NAMES_ECRYPTO = -14,	/* QUIC: no usable crypto context (OpenSSL failed) */
	NFQ_NAMES_EREQUEST = -15,	/* HTTP: a request line that is not one */
	NFQ_NAMES_EHEADERLINE = -16,	/* HTTP: a header line that is not one, or two Hosts */
	NFQ_NAMES_ENOTQUERY = -17,	/* DNS reply: not a standard query with one question */
	NFQ_NAMES_ENOTUDP = -18,	/* DNS reply: not a whole IPv4/IPv6 UDP datagram */
	NFQ_NAMES_EROOM = -19,		/* DNS reply: the output buffer is too small */
	NFQ_NAMES_ECODES = 19		/* how many codes there are */
};

enum {
	NFQ_DNS_NAME_MAX = 256,		/* a name's text (at most 253 bytes) and a NUL */
	NFQ_DNS_TYPE_A = 1,
	NFQ_DNS_TYPE_AAAA = 28,
	NFQ_DNS_RCODE_NXDOMAIN = 3,
	NFQ_DNS_REPLY_SINKHOLE = 1,	/* nfq_dns_reply_build: answer A/AAAA with 0.0.0.0 / :: */
	NFQ_DNS_REPLY_MAX_LEN = 40 + 8 + 12 + 255 + 4 + 12 + 16	/* IPv6, UDP, header, question, answer */
};

/*
 * A DNS message (RFC 1035): header, first question, and one answer at a
 * time. Names are text, case preserved, labels joined by dots, no final
 * dot; the root is the empty name. msg points at the parsed bytes, which
 * the answer iterator reads: keep them until done with the answers.
 */
struct nfq_dns {
	uint16_t id;
	uint16_t flags;			/* QR, opcode, AA, TC, RD, RA, Z, AD, CD, rcode as on the wire */
	uint16_t qdcount;
	uint16_t ancount;
	uint16_t nscount;
	uint16_t arcount;
	uint16_t qtype;			/* 0 when qdcount is 0 */
	uint16_t qclass;
	uint16_t qname_len;		/* bytes of qname */
	uint16_t labels;		/* labels of qname */
	uint32_t msg_len;
	const uint8_t *msg;
	uint32_t question_end;		/* offset just past the first question */
	uint32_t next_rr;		/* where the next answer starts */
	uint16_t answers_read;		/* answers the iterator has returned */
	uint16_t an_type;		/* the current answer's fields */
	uint16_t an_class;
	uint16_t an_rdlength;
	uint32_t an_ttl;
	uint32_t an_rdata;		/* offset of its data in msg */
	uint16_t an_name_len;
	uint16_t reserved;
	char qname[256];		/* NFQ_DNS_NAME_MAX: the first question's name, NUL-terminated */
	char an_name[256];		/* the current answer's owner name */
};

/* Parse the DNS message msg[0..len): 0 or an NFQ_NAMES_E* code. */
int nfq_dns_parse(struct nfq_dns *d, const uint8_t *msg, size_t len);
/* The next answer record into an_*: 1, 0 when there is none left, or a code. */
int nfq_dns_next_answer(struct nfq_dns *d);
/*
 * Build into out (cap bytes; NFQ_DNS_REPLY_MAX_LEN is enough) the answer to
 * the DNS query in the IPv4/IPv6 UDP packet pkt[0..len): from its
 * destination to its source, same id and question, QR and RA set, RD
 * copied, rcode; with NFQ_DNS_REPLY_SINKHOLE in flags, an A or AAAA query
 * gets rcode 0 and one answer 0.0.0.0 or :: with this ttl. Checksums set.
 * Its length, or an NFQ_NAMES_E* code.
 */
int nfq_dns_reply_build(uint8_t *out, size_t cap, const uint8_t *pkt, size_t len,
			uint32_t rcode, uint32_t flags, uint32_t ttl);

enum {
	NFQ_TLS_SNI_MAX = 256,		/* a host name (at most 255 bytes) and a NUL */
	NFQ_TLS_ALPN_MAX = 256,		/* the ALPN list as on the wire, cut there */
	NFQ_TLS_VERSIONS_MAX = 16,	/* supported_versions entries kept */
	NFQ_TLS_HELLO_MAX = 16384	/* the longest ClientHello taken across records */
};

/*
 * A TLS ClientHello (RFC 8446 4.1.2), from a record stream (nfq_tls_client_hello)
 * or from handshake bytes without records (QUIC CRYPTO data). The server
 * name, ALPN list and versions are copied in; has_* say which were sent.
 */
struct nfq_tls {
	uint16_t record_version;	/* of the first record; 0 without records */
	uint16_t legacy_version;	/* the ClientHello's client_version */
	uint16_t max_version;		/* highest supported_versions entry (GREASE skipped), else legacy */
	uint16_t cipher_suites;		/* how many */
	uint16_t extensions;		/* how many */
	uint16_t server_name_len;
	uint16_t alpn_len;		/* bytes of alpn_list kept */
	uint16_t alpn_count;		/* protocols in alpn_list kept */
	uint16_t versions_count;	/* entries of versions kept */
	uint8_t has_sni;
	uint8_t has_alpn;
	uint8_t has_versions;
	uint8_t alpn_cut;		/* the list was longer than NFQ_TLS_ALPN_MAX */
	uint32_t hello_len;		/* the ClientHello's body length */
	uint32_t consumed;		/* input bytes up to the end of the ClientHello */
	uint16_t versions[16];		/* NFQ_TLS_VERSIONS_MAX */
	char server_name[256];		/* NFQ_TLS_SNI_MAX: NUL-terminated */
	uint8_t alpn_list[256];		/* NFQ_TLS_ALPN_MAX: length-prefixed names, as on the wire */
	uint8_t scratch[16388];		/* NFQ_TLS_HELLO_MAX + 4: a ClientHello gathered across records */
};

/* The ClientHello starting the TLS record stream p[0..len). */
int nfq_tls_client_hello(struct nfq_tls *t, const uint8_t *p, size_t len);
/* The ClientHello handshake message (type, length, body) at p[0..len). */
int nfq_tls_handshake(struct nfq_tls *t, const uint8_t *p, size_t len);

enum {
	NFQ_QUIC_V1 = 1,
	NFQ_QUIC_V2 = 0x6b3343cf,
	NFQ_QUIC_MAX_PACKET = 65535,	/* an Initial longer than this is refused */
	NFQ_QUIC_MAX_FRAMES = 64	/* CRYPTO frames gathered from one packet */
};

struct nfq_quic_keys;

/*
 * A QUIC client Initial (RFC 9000 17.2.2), decrypted (RFC 9001 5, RFC 9369):
 * its header fields, and the ClientHello its CRYPTO frames carry from
 * offset 0, in tls. keys holds the OpenSSL contexts (nfq_quic_init) and the
 * keys of the last connection ID seen, reused while it repeats.
 */
struct nfq_quic {
	uint32_t version;
	uint32_t packet_number;
	uint8_t dcid_len;
	uint8_t scid_len;
	uint16_t crypto_frames;		/* CRYPTO frames in the packet */
	uint32_t token_len;
	uint32_t packet_len;		/* bytes of this packet in the datagram */
	uint32_t crypto_len;		/* contiguous CRYPTO bytes from offset 0 */
	uint8_t dcid[20];
	uint8_t scid[20];
	struct nfq_quic_keys *keys;
	struct nfq_tls tls;
	uint8_t plain[65535];		/* NFQ_QUIC_MAX_PACKET: the decrypted payload */
	uint8_t crypto[16388];		/* NFQ_TLS_HELLO_MAX + 4: CRYPTO data by offset */
};

/* Set up q's OpenSSL contexts: 0, or -1 (out of memory, or no AES/HMAC). */
int nfq_quic_init(struct nfq_quic *q);
/* Free them; q can be initialised again. */
void nfq_quic_close(struct nfq_quic *q);
/* The client Initial at the start of the UDP payload p[0..len). */
int nfq_quic_initial(struct nfq_quic *q, const uint8_t *p, size_t len);

/*
 * The head of an HTTP/1.x request (RFC 9112): request line and the Host
 * header; offsets into the input, which the caller keeps. host is the
 * Host value without spaces and port (port: 0 when none is given).
 */
struct nfq_http {
	const uint8_t *base;		/* the input the offsets count from */
	uint32_t method_off;
	uint32_t method_len;
	uint32_t path_off;
	uint32_t path_len;
	uint32_t host_off;
	uint32_t host_len;		/* 0: no Host header (yet, when complete is 0) */
	uint32_t port;
	uint32_t head_len;		/* bytes up to the empty line ending the head; 0 if not reached */
	uint8_t version_minor;		/* HTTP/1.0 or HTTP/1.1 */
	uint8_t has_host;
	uint8_t complete;		/* the whole head was parsed */
	uint8_t reserved;
};

/*
 * The request head at p[0..len): 0 once the request line and the Host
 * header are whole (or the head ended without Host), INCOMPLETE before.
 */
int nfq_http_request(struct nfq_http *h, const uint8_t *p, size_t len);

/*
 * Where the UDP or TCP payload of the IPv4/IPv6 packet pkt[0..len) starts
 * (*off) and how long it is (*len, cut to what was captured): 17 or 6, or
 * -1 for anything else, fragments other than the first included.
 */
int nfq_names_payload(const uint8_t *pkt, size_t len, uint32_t *off, uint32_t *plen);
/* The reason for a code, from "incomplete" and "malformed: ...". */
const char *nfq_names_strerror(int code);
/* END CDEF */
#pragma GCC visibility pop

#endif

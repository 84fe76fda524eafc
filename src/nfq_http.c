/*
 * nfq_http.c: the head of an HTTP/1.x request (RFC 9112 3 and 5): method,
 * request target and Host, as offsets into the caller's bytes.
 *
 * The parse stops as soon as it knows the host: a request line and a Host
 * line, both ended by LF (CRLF, or a bare LF as RFC 9112 2.2 lets a
 * recipient accept). A second Host header is refused, as RFC 9112 3.2 tells
 * servers to (two hosts are how filters get bypassed), and so is a header
 * line without a colon, with whitespace before it, or with a control byte.
 * spec/fuzz/fuzz_http.c fuzzes this file.
 */
#include <string.h>
#include <strings.h>

#include "nfq_names.h"

#define MAX_HEAD 65535

/* RFC 9110 5.6.2 tchar: letters, digits and !#$%&'*+-.^_`|~, as bits by byte value. */
static int is_tchar(uint8_t c)
{
	static const uint64_t below_64 = 0x03ff6cfa00000000ULL, from_64 = 0x57ffffffc7fffffeULL;
	return c < 64 ? (int)(below_64 >> c & 1) : c < 128 ? (int)(from_64 >> (c - 64) & 1) : 0;
}

/* The end of the line at p[at..len) (the offset of its LF), or -1. */
static long line_end(const uint8_t *p, size_t at, size_t len)
{
	const uint8_t *lf = memchr(p + at, '\n', len - at);
	return lf ? lf - p : -1;
}

static int request_line(struct nfq_http *h, const uint8_t *p, size_t end)
{
	size_t at = 0;
	while (at < end && is_tchar(p[at]))
		at++;
	if (at == 0 || at >= end || p[at] != ' ')
		return NFQ_NAMES_EREQUEST;
	h->method_len = (uint32_t)at;
	size_t path = ++at;
	while (at < end && p[at] > ' ' && p[at] != 0x7f)
		at++;
	if (at == path || at >= end || p[at] != ' ')
		return NFQ_NAMES_EREQUEST;
	h->path_off = (uint32_t)path;
	h->path_len = (uint32_t)(at - path);
	at++;
	size_t vlen = end - at;
	if (vlen > 0 && p[end - 1] == '\r')
		vlen--;
	if (vlen != 8 || memcmp(p + at, "HTTP/1.", 7) != 0 || (p[at + 7] != '0' && p[at + 7] != '1'))
		return NFQ_NAMES_EREQUEST;
	h->version_minor = (uint8_t)(p[at + 7] - '0');
	return 0;
}

/* The Host value p[at..end), spaces trimmed: host and port. */
static int host_value(struct nfq_http *h, const uint8_t *p, size_t at, size_t end)
{
	while (at < end && (p[at] == ' ' || p[at] == '\t'))
		at++;
	while (end > at && (p[end - 1] == ' ' || p[end - 1] == '\t'))
		end--;
	size_t host_end = end;
	/* A port follows the last colon, unless that is inside an IPv6 literal. */
	for (size_t i = end; i > at; i--) {
		if (p[i - 1] == ']')
			break;
		if (p[i - 1] == ':') {
			uint32_t port = 0;
			if (i == end || end - i > 5)
				return NFQ_NAMES_EHEADERLINE;
			for (size_t d = i; d < end; d++) {
				if (p[d] < '0' || p[d] > '9')
					return NFQ_NAMES_EHEADERLINE;
				port = port * 10 + (uint32_t)(p[d] - '0');
			}
			if (port > 65535)
				return NFQ_NAMES_EHEADERLINE;
			h->port = port;
			host_end = i - 1;
			break;
		}
	}
	for (size_t i = at; i < host_end; i++)
		if (p[i] <= ' ' || p[i] == 0x7f)
			return NFQ_NAMES_EHEADERLINE;
	h->host_off = (uint32_t)at;
	h->host_len = (uint32_t)(host_end - at);
	return 0;
}

int nfq_http_request(struct nfq_http *h, const uint8_t *p, size_t len)
{
	memset(h, 0, sizeof *h);
	h->base = p;
	if (len > MAX_HEAD)
		len = MAX_HEAD;
	long end = line_end(p, 0, len);
	if (end < 0) {
		/* Refuse what cannot become a request line before waiting for more. */
		size_t at = 0;
		while (at < len && is_tchar(p[at]))
			at++;
		if (at < len && p[at] != ' ')
			return NFQ_NAMES_EREQUEST;
		return NFQ_NAMES_INCOMPLETE;
	}
	int rc = request_line(h, p, (size_t)end);
	if (rc < 0)
		return rc;
	for (size_t at = (size_t)end + 1;;) {
		end = line_end(p, at, len);
		if (end < 0)
			return h->has_host ? 0 : NFQ_NAMES_INCOMPLETE;
		size_t stop = (size_t)end;
		if (stop > at && p[stop - 1] == '\r')
			stop--;
		if (stop == at) {
			h->head_len = (uint32_t)end + 1;
			h->complete = 1;
			return 0;
		}
		size_t colon = at;
		while (colon < stop && is_tchar(p[colon]))
			colon++;
		if (colon == at || colon >= stop || p[colon] != ':')
			return NFQ_NAMES_EHEADERLINE;
		for (size_t i = colon + 1; i < stop; i++)
			if ((p[i] < ' ' && p[i] != '\t') || p[i] == 0x7f)
				return NFQ_NAMES_EHEADERLINE;
		if (colon - at == 4 && strncasecmp((const char *)p + at, "host", 4) == 0) {
			if (h->has_host)
				return NFQ_NAMES_EHEADERLINE;
			h->has_host = 1;
			rc = host_value(h, p, colon + 1, stop);
			if (rc < 0)
				return rc;
		}
		at = (size_t)end + 1;
	}
}

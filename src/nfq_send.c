/*
 * nfq_send.c: sending whole IP packets (nfq.send, pkt:reject) through raw
 * sockets that take the IP header as given: the checks a packet passes
 * before the kernel sees it, the sockets and their mark, and the packets
 * that wait for a flush, which nfq_queue.c interleaves with its verdicts.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "nfq_internal.h"

/* A flush sends at most this many bytes of packets; more flushes early. */
#define SEND_BYTES_MAX (1u << 20)
/* Send buffer of each socket: a burst of sends never waits for room. */
#define SEND_SOCKET_BUFFER (4 << 20)

enum { FAMILY_V4, FAMILY_V6 };

/* A packet waiting for the flush: its bytes are at off in the byte buffer. */
struct waiting {
	size_t at;		/* the verdict bytes that go before it */
	size_t off;
	uint32_t len;
	uint32_t mark;
	uint32_t scope;
	uint8_t family;
};

union send_addr {
	struct sockaddr_in v4;
	struct sockaddr_in6 v6;
};

union mark_cmsg {
	char buf[CMSG_SPACE(sizeof(uint32_t))];
	struct cmsghdr align;
};

struct nfq_sender {
	int fd[2];		/* raw IPv4 and IPv6 sockets, -1 without */
	uint32_t mark, mask;
	unsigned n;
	struct waiting wait[NFQ_SEND_BATCH];
	uint8_t *bytes;
	size_t bytes_len, bytes_cap;
	/* What sendmmsg() is given, filled at the flush. */
	struct mmsghdr mmsg[NFQ_SEND_BATCH];
	struct iovec iov[NFQ_SEND_BATCH];
	union send_addr addr[NFQ_SEND_BATCH];
	union mark_cmsg cmsg[NFQ_SEND_BATCH];
};

int nfq_send_check(const uint8_t *data, size_t len, char *why, size_t whylen)
{
	if (!data || len == 0) {
		snprintf(why, whylen, "malformed packet: it is empty");
		return -1;
	}
	unsigned version = data[0] >> 4;
	if (version == 4) {
		if (len < 20) {
			snprintf(why, whylen, "malformed packet: %zu bytes are shorter than an IPv4 header (20)", len);
			return -1;
		}
		size_t ihl = (size_t)(data[0] & 15) * 4;
		size_t total = nfq_get16(data + 2);
		if (ihl < 20 || ihl > len) {
			snprintf(why, whylen, "malformed IPv4 header: its header length is %zu bytes, in a packet of %zu", ihl, len);
			return -1;
		}
		if (total != len) {
			snprintf(why, whylen, "malformed IPv4 header: its total length is %zu, but the packet has %zu bytes", total, len);
			return -1;
		}
		return 0;
	}
	if (version == 6) {
		if (len < 40) {
			snprintf(why, whylen, "malformed packet: %zu bytes are shorter than an IPv6 header (40)", len);
			return -1;
		}
		size_t payload = nfq_get16(data + 4);
		if (payload + 40 != len) {
			snprintf(why, whylen, "malformed IPv6 header: its payload length is %zu, but %zu bytes follow the header",
				 payload, len - 40);
			return -1;
		}
		return 0;
	}
	snprintf(why, whylen, "malformed packet: its IP version is %u, not 4 or 6", version);
	return -1;
}

static void close_fds(struct nfq_sender *s)
{
	for (int i = 0; i < 2; i++)
		if (s->fd[i] >= 0)
			close(s->fd[i]);
}

/* A raw socket of family that takes the whole IP packet, with the send mark. */
static int open_raw(int family, uint32_t mark)
{
	/* IPPROTO_RAW implies IP_HDRINCL, and IPV6_HDRINCL for IPv6. */
	int fd = socket(family, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
	if (fd < 0)
		return -1;
	int on = 1, size = SEND_SOCKET_BUFFER;
	if ((mark && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) < 0) ||
	    (family == AF_INET && setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &on, sizeof on) < 0)) {
		int saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	/* FORCE passes net.core.wmem_max for root; otherwise take what we get. */
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) < 0)
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
	return fd;
}

struct nfq_sender *nfq_sender_open(uint32_t mark, uint32_t mask, int raw)
{
	struct nfq_sender *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->fd[FAMILY_V4] = s->fd[FAMILY_V6] = -1;
	s->mark = mark;
	s->mask = mask;
	if (raw && ((s->fd[FAMILY_V4] = open_raw(AF_INET, mark)) < 0 ||
		    (s->fd[FAMILY_V6] = open_raw(AF_INET6, mark)) < 0)) {
		int saved = errno;
		close_fds(s);
		free(s);
		errno = saved;
		return NULL;
	}
	return s;
}

void nfq_sender_close(struct nfq_sender *s)
{
	if (!s)
		return;
	close_fds(s);
	free(s->bytes);
	free(s);
}

int nfq_sender_is_raw(const struct nfq_sender *s)
{
	return s->fd[FAMILY_V4] >= 0;
}

uint32_t nfq_sender_mark(const struct nfq_sender *s, uint32_t mark, int has_mark)
{
	if (!has_mark)
		return s->mark;
	return (mark & ~s->mask) | (s->mark & s->mask);
}

/* Where a packet goes: its own destination, with scope for an IPv6 link-local one. */
static socklen_t fill_addr(union send_addr *a, const uint8_t *data, uint32_t scope)
{
	memset(a, 0, sizeof *a);
	if (data[0] >> 4 == 4) {
		a->v4.sin_family = AF_INET;
		memcpy(&a->v4.sin_addr, data + 16, 4);
		return sizeof a->v4;
	}
	a->v6.sin6_family = AF_INET6;
	memcpy(&a->v6.sin6_addr, data + 24, 16);
	if (IN6_IS_ADDR_LINKLOCAL(&a->v6.sin6_addr) || IN6_IS_ADDR_MC_LINKLOCAL(&a->v6.sin6_addr))
		a->v6.sin6_scope_id = scope;
	return sizeof a->v6;
}

/* A mark other than the socket's travels with the packet (SO_MARK cmsg). */
static void fill_mark(struct msghdr *m, union mark_cmsg *c, const struct nfq_sender *s, uint32_t mark)
{
	if (mark == s->mark) {
		m->msg_control = NULL;
		m->msg_controllen = 0;
		return;
	}
	memset(c, 0, sizeof *c);
	m->msg_control = c->buf;
	m->msg_controllen = sizeof c->buf;
	struct cmsghdr *h = CMSG_FIRSTHDR(m);
	h->cmsg_level = SOL_SOCKET;
	h->cmsg_type = SO_MARK;
	h->cmsg_len = CMSG_LEN(sizeof mark);
	memcpy(CMSG_DATA(h), &mark, sizeof mark);
}

/* "sending a 60-byte IPv4 packet to 10.0.0.2: Network is unreachable (...)" */
static void describe_failure(const uint8_t *data, uint32_t len, int err, char *why, size_t whylen)
{
	char to[INET6_ADDRSTRLEN] = "?";
	int v6 = data[0] >> 4 == 6;
	inet_ntop(v6 ? AF_INET6 : AF_INET, data + (v6 ? 24 : 16), to, sizeof to);
	const char *hint = "";
	switch (err) {
	case EPERM:
		hint = " (a netfilter rule on OUTPUT or POSTROUTING dropped it)";
		break;
	case EMSGSIZE:
		hint = " (it is larger than the MTU of its route and may not be fragmented: fragment it first)";
		break;
	case ENETUNREACH:
	case EHOSTUNREACH:
		hint = " (no route to it)";
		break;
	case EINVAL:
		if (v6)
			hint = " (an IPv6 link-local destination needs an interface)";
		break;
	}
	snprintf(why, whylen, "sending a %u-byte IPv%d packet to %s: %s%s", len, v6 ? 6 : 4, to,
		 strerror(err), hint);
	errno = err;
}

int nfq_sender_send(struct nfq_sender *s, const uint8_t *data, size_t len, uint32_t mark, uint32_t scope,
		    char *why, size_t whylen)
{
	union send_addr addr;
	union mark_cmsg cmsg;
	struct iovec iov = { (void *)data, len };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	m.msg_namelen = fill_addr(&addr, data, scope);
	m.msg_name = &addr;
	fill_mark(&m, &cmsg, s, mark);
	int fd = s->fd[data[0] >> 4 == 6 ? FAMILY_V6 : FAMILY_V4];
	for (;;) {
		if (sendmsg(fd, &m, 0) >= 0)
			return 0;
		if (errno != EINTR)
			break;
	}
	describe_failure(data, (uint32_t)len, errno, why, whylen);
	return -1;
}

int nfq_sender_has_room(const struct nfq_sender *s, size_t len)
{
	return s->n < NFQ_SEND_BATCH && (s->n == 0 || s->bytes_len + len <= SEND_BYTES_MAX);
}

int nfq_sender_add(struct nfq_sender *s, const uint8_t *data, size_t len, uint32_t mark, uint32_t scope,
		   size_t at)
{
	if (!nfq_sender_has_room(s, len)) {
		errno = ENOBUFS;
		return -1;
	}
	if (s->bytes_len + len > s->bytes_cap) {
		size_t cap = s->bytes_cap ? s->bytes_cap : 16384;
		while (cap < s->bytes_len + len)
			cap *= 2;
		uint8_t *bytes = realloc(s->bytes, cap);
		if (!bytes)
			return -1;
		s->bytes = bytes;
		s->bytes_cap = cap;
	}
	memcpy(s->bytes + s->bytes_len, data, len);
	s->wait[s->n] = (struct waiting){ .at = at, .off = s->bytes_len, .len = (uint32_t)len, .mark = mark,
					  .scope = scope, .family = data[0] >> 4 == 6 ? FAMILY_V6 : FAMILY_V4 };
	s->bytes_len += len;
	s->n++;
	return 0;
}

unsigned nfq_sender_waiting(const struct nfq_sender *s)
{
	return s->n;
}

size_t nfq_sender_position(const struct nfq_sender *s, unsigned i)
{
	return s->wait[i].at;
}

/*
 * sendmmsg() the waiting packets [from, to) of one family. A packet the
 * kernel refuses is skipped and counted, its reason kept in why; the rest
 * still go, in order.
 */
static unsigned send_run(struct nfq_sender *s, unsigned from, unsigned to, unsigned *failed,
			 char *why, size_t whylen)
{
	int fd = s->fd[s->wait[from].family];
	for (unsigned i = from; i < to; i++) {
		const struct waiting *w = &s->wait[i];
		struct msghdr *m = &s->mmsg[i].msg_hdr;
		s->iov[i].iov_base = s->bytes + w->off;
		s->iov[i].iov_len = w->len;
		memset(m, 0, sizeof *m);
		m->msg_iov = &s->iov[i];
		m->msg_iovlen = 1;
		m->msg_name = &s->addr[i];
		m->msg_namelen = fill_addr(&s->addr[i], s->bytes + w->off, w->scope);
		fill_mark(m, &s->cmsg[i], s, w->mark);
	}
	unsigned sent = 0;
	unsigned i = from;
	while (i < to) {
		int n = sendmmsg(fd, s->mmsg + i, to - i, 0);
		if (n > 0) {
			sent += (unsigned)n;
			i += (unsigned)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		/* sendmmsg() reports the error of the first packet it could not send. */
		describe_failure(s->bytes + s->wait[i].off, s->wait[i].len, n < 0 ? errno : EIO, why, whylen);
		(*failed)++;
		i++;
	}
	return sent;
}

unsigned nfq_sender_send_waiting(struct nfq_sender *s, unsigned from, unsigned to, unsigned *failed,
				 char *why, size_t whylen)
{
	unsigned sent = 0;
	/* One sendmmsg() per run of one family: the order stays the order of the calls. */
	while (from < to) {
		unsigned end = from + 1;
		while (end < to && s->wait[end].family == s->wait[from].family)
			end++;
		sent += send_run(s, from, end, failed, why, whylen);
		from = end;
	}
	return sent;
}

void nfq_sender_clear(struct nfq_sender *s)
{
	s->n = 0;
	s->bytes_len = 0;
}

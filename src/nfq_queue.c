/*
 * nfq_queue.c: the netlink side: the socket, binding a queue, receiving
 * batches of packets and sending verdicts, in order with the packets the
 * script sends (nfq_send.c).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#include "nfq_internal.h"

/* Room for the attributes that come with a payload of `range` bytes. */
#define MSG_OVERHEAD 4096
/* Verdicts are sent once this many bytes are waiting. */
#define TX_FLUSH_AT (64 * 1024)
#define ACK_TIMEOUT_MS 5000
/*
 * Rounds of reading what is left in the socket before an unbind, when the
 * kernel could not be told to stop queueing (otherwise: until it is empty).
 */
#define DRAIN_ROUNDS 256

struct nfq_queue_priv {
	int own_fd;
	int stats_fd;		/* /proc/.../nfnetlink_queue kept open, or -1 */
	int offline;		/* no kernel: verdicts go to records */
	uint32_t mode;		/* offline copy mode */
	struct nfq_verdict_record *records;
	uint32_t n_records, records_cap;
	uint32_t seq;
	uint32_t ack_seq;	/* the request we wait for, 0 if none */
	int ack_err;
	int ack_seen;
	int discard_packets;	/* unbinding: packets read are gone already */
	int unbound_stats_valid;
	struct nfq_kernel_stats unbound_stats;	/* the kernel's counters just before the unbind */
	size_t slot_size;
	unsigned rx_used;	/* receive buffers holding this batch */
	uint8_t *rx;		/* NFQ_BATCH_SLOTS buffers of slot_size bytes */
	struct mmsghdr mmsg[NFQ_BATCH_SLOTS];
	struct iovec iov[NFQ_BATCH_SLOTS];
	uint8_t *tx;
	size_t tx_len, tx_cap;
	/*
	 * Where tx ends with a verdict that lets a packet go on (any but a
	 * drop): a packet sent now must follow the verdicts up to here, no more.
	 */
	size_t release_pos;
	char send_error[256];	/* why the kernel last refused a sent packet */
	/*
	 * Plain accepts of batch slots wait here, in id order, and go out as
	 * one NFQNL_MSG_VERDICT_BATCH when nothing older is still pending.
	 */
	uint32_t deferred[NFQ_BATCH_SLOTS];
	int rcvtimeo_ms;	/* SO_RCVTIMEO last set, for nfq_queue_receive_in_recv() */
	unsigned n_deferred;
	int deferred_mark_set;	/* the run's packets all get deferred_mark */
	int asked_timestamps;	/* SO_TIMESTAMP set: see ask_timestamps() */
	uint32_t deferred_mark;
	struct nfq_packet *retained;	/* retained packets still pending, oldest first */
	struct nfq_packet *retained_tail;
};

/*
 * Batch slot arrays are never given back to malloc: a stale Lua reference to
 * a slot must still find a valid generation number, even after its queue
 * was closed. Closed queues hand their arrays to the next queue opened.
 */
static struct slot_array {
	struct nfq_packet *pkts;
	struct slot_array *next;
} *spare_slots;
static pthread_mutex_t spare_lock = PTHREAD_MUTEX_INITIALIZER;

static struct nfq_packet *get_slots(void)
{
	struct nfq_packet *pkts = NULL;
	pthread_mutex_lock(&spare_lock);
	struct slot_array *s = spare_slots;
	if (s) {
		spare_slots = s->next;
		pkts = s->pkts;
		free(s);
	}
	pthread_mutex_unlock(&spare_lock);
	return pkts ? pkts : calloc(NFQ_BATCH_SLOTS, sizeof(struct nfq_packet));
}

static void put_slots(struct nfq_packet *pkts)
{
	struct slot_array *s = malloc(sizeof *s);
	if (!s)
		return;	/* leak the array rather than free memory a ref may read */
	for (unsigned i = 0; i < NFQ_BATCH_SLOTS; i++) {
		pkts[i].gen++;
		pkts[i].queue = NULL;
	}
	pthread_mutex_lock(&spare_lock);
	s->pkts = pkts;
	s->next = spare_slots;
	spare_slots = s;
	pthread_mutex_unlock(&spare_lock);
}

static void set_error(struct nfq_queue *q, const char *fmt, ...)
{
	int saved = errno;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(q->errmsg, sizeof q->errmsg, fmt, ap);
	va_end(ap);
	errno = saved;
}

static int check_netfilter_socket(int fd)
{
	int domain = 0, protocol = 0;
	socklen_t len = sizeof domain;
	if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0)
		return -1;
	len = sizeof protocol;
	if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len) < 0)
		return -1;
	if (domain != AF_NETLINK || protocol != NETLINK_NETFILTER) {
		errno = EPROTOTYPE;
		return -1;
	}
	return 0;
}

/* An unbound queue with its private part, accepting by default. */
static struct nfq_queue *new_queue(int fd)
{
	struct nfq_queue *q = calloc(1, sizeof *q);
	struct nfq_queue_priv *s = calloc(1, sizeof *s);
	if (!q || !s) {
		free(q);
		free(s);
		return NULL;
	}
	q->priv = s;
	s->stats_fd = -1;
	q->queue_num = -1;
	q->fallback = NF_ACCEPT;
	q->bypass_mark = q->bypass_mask = NFQ_BYPASS_MARK;
	q->fd = fd;
	return q;
}

struct nfq_queue *nfq_queue_open(int sockfd)
{
	struct nfq_queue *q = new_queue(sockfd);
	if (!q)
		return NULL;
	struct nfq_queue_priv *s = q->priv;
	if (sockfd < 0) {
		q->fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
		if (q->fd < 0)
			goto fail;
		s->own_fd = 1;
	} else if (check_netfilter_socket(sockfd) < 0) {
		goto fail;
	}
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK };
	socklen_t salen = sizeof sa;
	if (getsockname(q->fd, (struct sockaddr *)&sa, &salen) < 0)
		goto fail;
	if (sa.nl_pid == 0 && bind(q->fd, (struct sockaddr *)&sa, sizeof sa) < 0)
		goto fail;
	s->seq = (uint32_t)getpid() << 8;
	return q;
fail:;
	int saved = errno;
	if (s->own_fd)
		close(q->fd);
	free(s);
	free(q);
	errno = saved;
	return NULL;
}

static int send_all(struct nfq_queue *q, const void *buf, size_t len)
{
	static const struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	for (;;) {
		ssize_t n = sendto(q->fd, buf, len, 0,
				   (const struct sockaddr *)&kernel, sizeof kernel);
		if (n >= 0)
			return 0;
		if (errno != EINTR)
			return -1;
	}
}

/* Send the verdict messages in tx[from, to). */
static int send_verdicts(struct nfq_queue *q, size_t from, size_t to)
{
	if (to <= from)
		return 0;
	int rc = send_all(q, q->priv->tx + from, to - from);
	if (rc < 0) {
		q->stats.verdict_errors++;
		set_error(q, "sending verdicts: %s", strerror(errno));
	}
	return rc;
}

/*
 * Send what waits, in the order the script gave it: the verdicts up to
 * where the first waiting packet was sent, then that packet and those sent
 * at the same point (a sendmmsg() per run of one family), then the next
 * verdicts, and so on. Without sent packets, all verdicts go in one sendto().
 */
static int send_tx(struct nfq_queue *q)
{
	struct nfq_queue_priv *s = q->priv;
	struct nfq_sender *snd = q->sender;
	unsigned n = snd ? nfq_sender_waiting(snd) : 0;
	size_t done = 0;
	int rc = 0;
	for (unsigned i = 0; i < n;) {
		size_t at = nfq_sender_position(snd, i);
		unsigned end = i + 1;
		while (end < n && nfq_sender_position(snd, end) == at)
			end++;
		if (send_verdicts(q, done, at) < 0)
			rc = -1;
		done = at;
		unsigned failed = 0;
		char why[sizeof q->errmsg];
		q->stats.sent += nfq_sender_send_waiting(snd, i, end, &failed, why, sizeof why);
		if (failed) {
			q->stats.send_errors += failed;
			snprintf(s->send_error, sizeof s->send_error, "%s", why);
		}
		i = end;
	}
	if (send_verdicts(q, done, s->tx_len) < 0)
		rc = -1;
	if (n)
		nfq_sender_clear(snd);
	s->tx_len = 0;
	s->release_pos = 0;
	return rc;
}

static int emit_deferred(struct nfq_queue *q);

int nfq_queue_flush(struct nfq_queue *q)
{
	emit_deferred(q);
	q->in_dispatch = 0;
	return send_tx(q);
}

/* The next record of an offline queue, zeroed; NULL without memory. */
static struct nfq_verdict_record *new_record(struct nfq_queue *q)
{
	struct nfq_queue_priv *s = q->priv;
	if (s->n_records == s->records_cap) {
		uint32_t cap = s->records_cap ? s->records_cap * 2 : 64;
		struct nfq_verdict_record *r = realloc(s->records, cap * sizeof *r);
		if (!r)
			return NULL;
		s->records = r;
		s->records_cap = cap;
	}
	struct nfq_verdict_record *r = &s->records[s->n_records];
	memset(r, 0, sizeof *r);
	return r;
}

static int record_verdict(struct nfq_queue *q, const struct nfq_packet *p,
			  uint32_t verdict)
{
	struct nfq_queue_priv *s = q->priv;
	struct nfq_verdict_record *r = new_record(q);
	if (!r)
		return -1;
	r->kind = NFQ_RECORD_VERDICT;
	r->id = p->id;
	r->verdict = verdict;
	r->flags = p->flags;
	r->mark = p->new_mark;
	r->connmark = p->new_connmark;
	if (p->flags & NFQ_PF_PAYLOAD_SET) {
		r->payload = malloc(p->new_payload_len + 1);
		if (!r->payload)
			return -1;
		memcpy(r->payload, p->new_payload, p->new_payload_len);
		r->payload_len = p->new_payload_len;
	}
	s->n_records++;
	return 0;
}

/* An offline queue records a packet sent, between the verdicts. */
static int record_sent(struct nfq_queue *q, const void *data, size_t len, uint32_t mark)
{
	struct nfq_verdict_record *r = new_record(q);
	uint8_t *copy = r ? malloc(len) : NULL;
	if (!copy) {
		set_error(q, "recording a sent packet: out of memory");
		return -1;
	}
	memcpy(copy, data, len);
	r->kind = NFQ_RECORD_SENT;
	r->payload = copy;
	r->payload_len = (uint32_t)len;
	r->mark = mark;
	q->priv->n_records++;
	q->stats.sent++;
	return 0;
}

const struct nfq_verdict_record *nfq_queue_records(const struct nfq_queue *q, uint32_t *count)
{
	*count = q->priv->n_records;
	return q->priv->records;
}

void nfq_queue_clear_records(struct nfq_queue *q)
{
	struct nfq_queue_priv *s = q->priv;
	for (uint32_t i = 0; i < s->n_records; i++)
		free(s->records[i].payload);
	s->n_records = 0;
}

static int tx_reserve(struct nfq_queue *q, size_t need)
{
	struct nfq_queue_priv *s = q->priv;
	if (s->tx_len > 0 && s->tx_len + need > TX_FLUSH_AT)
		send_tx(q);
	if (s->tx_len + need <= s->tx_cap)
		return 0;
	size_t cap = s->tx_cap ? s->tx_cap : 16384;
	while (cap < s->tx_len + need)
		cap *= 2;
	uint8_t *tx = realloc(s->tx, cap);
	if (!tx)
		return -1;
	s->tx = tx;
	s->tx_cap = cap;
	return 0;
}

static struct nlmsghdr *put_verdict_msg(struct nfq_queue *q, int type,
					 uint32_t id, uint32_t verdict)
{
	struct nfq_queue_priv *s = q->priv;
	struct nlmsghdr *nlh = nfq_nlmsg_put((char *)s->tx + s->tx_len, type,
					     (uint32_t)q->queue_num);
	nfq_nlmsg_verdict_put(nlh, (int)id, (int)verdict);
	return nlh;
}

/* Send the waiting plain accepts: one batch verdict when that is exact. */
static int emit_deferred(struct nfq_queue *q)
{
	struct nfq_queue_priv *s = q->priv;
	unsigned n = s->n_deferred;
	if (n == 0)
		return 0;
	/* A batch verdict covers every queued id up to the last: only safe when
	 * no retained packet is waiting with an older one. */
	int one_batch = s->retained == NULL;
	if (tx_reserve(q, one_batch ? 64 : 64 * (size_t)n) < 0)
		return -1;
	s->n_deferred = 0;
	for (unsigned i = one_batch ? n - 1 : 0; i < n; i++) {
		struct nlmsghdr *nlh = put_verdict_msg(q, one_batch ? NFQNL_MSG_VERDICT_BATCH : NFQNL_MSG_VERDICT,
						       s->deferred[i], NF_ACCEPT);
		if (s->deferred_mark_set)
			nfq_nlmsg_verdict_put_mark(nlh, s->deferred_mark);
		s->tx_len += nlh->nlmsg_len;
	}
	s->release_pos = s->tx_len;
	return 0;
}

int nfq_queue_put_verdict(struct nfq_queue *q, const struct nfq_packet *p,
			  uint32_t verdict)
{
	struct nfq_queue_priv *s = q->priv;
	if (s->offline)
		return record_verdict(q, p, verdict);
	/* A batch verdict carries one mark for all its packets: runs share it. */
	uint32_t changes = NFQ_PF_PAYLOAD_SET | NFQ_PF_CONNMARK_SET | NFQ_PF_HEAP;
	if (verdict == NF_ACCEPT && !(p->flags & changes) && q->in_dispatch) {
		int mark_set = (p->flags & NFQ_PF_MARK_SET) != 0;
		if (s->n_deferred > 0 &&
		    (s->n_deferred == NFQ_BATCH_SLOTS || p->id <= s->deferred[s->n_deferred - 1] ||
		     mark_set != s->deferred_mark_set || (mark_set && p->new_mark != s->deferred_mark)) &&
		    emit_deferred(q) < 0)
			return -1;
		if (s->n_deferred == 0) {
			s->deferred_mark_set = mark_set;
			s->deferred_mark = p->new_mark;
		}
		s->deferred[s->n_deferred++] = p->id;
		return 0;
	}
	/* Verdicts leave in the order they were given. */
	if (emit_deferred(q) < 0)
		return -1;
	uint32_t plen = (p->flags & NFQ_PF_PAYLOAD_SET) ? p->new_payload_len : 0;
	if (tx_reserve(q, 128 + MNL_ALIGN(plen)) < 0)
		return -1;
	struct nlmsghdr *nlh = put_verdict_msg(q, NFQNL_MSG_VERDICT, p->id, verdict);
	if (p->flags & NFQ_PF_MARK_SET)
		nfq_nlmsg_verdict_put_mark(nlh, p->new_mark);
	if (p->flags & NFQ_PF_CONNMARK_SET) {
		struct nlattr *ct = mnl_attr_nest_start(nlh, NFQA_CT);
		mnl_attr_put_u32(nlh, CTA_MARK, htonl(p->new_connmark));
		mnl_attr_nest_end(nlh, ct);
	}
	if (p->flags & NFQ_PF_PAYLOAD_SET)
		nfq_nlmsg_verdict_put_pkt(nlh, p->new_payload, plen);
	s->tx_len += nlh->nlmsg_len;
	if ((verdict & NF_VERDICT_MASK) != NF_DROP)
		s->release_pos = s->tx_len;
	return 0;
}

const char *nfq_queue_send_error(const struct nfq_queue *q)
{
	return q->priv->send_error;
}

void nfq_queue_set_sender(struct nfq_queue *q, struct nfq_sender *snd)
{
	if (q->sender == snd)
		return;
	/* What the old sender holds leaves first, in its place among the verdicts. */
	if (q->sender && nfq_sender_waiting(q->sender))
		send_tx(q);
	nfq_sender_close(q->sender);
	q->sender = snd;
}

int nfq_queue_send(struct nfq_queue *q, const void *data, size_t len, uint32_t mark, int has_mark,
		   uint32_t scope)
{
	struct nfq_queue_priv *s = q->priv;
	struct nfq_sender *snd = q->sender;
	if (!snd) {
		errno = EOPNOTSUPP;
		set_error(q, "sending is off for this queue");
		return -1;
	}
	if (nfq_send_check(data, len, q->errmsg, sizeof q->errmsg) < 0) {
		errno = EINVAL;
		return -1;
	}
	mark = nfq_sender_mark(snd, mark, has_mark);
	if (s->offline)
		return record_sent(q, data, len, mark);
	if (!nfq_sender_is_raw(snd)) {
		errno = EOPNOTSUPP;
		set_error(q, "this queue's sender has no sockets (it was opened for an offline queue)");
		return -1;
	}
	if (!q->in_dispatch) {
		if (nfq_sender_send(snd, data, len, mark, scope, q->errmsg, sizeof q->errmsg) < 0) {
			q->stats.send_errors++;
			snprintf(s->send_error, sizeof s->send_error, "%s", q->errmsg);
			return -1;
		}
		q->stats.sent++;
		return 0;
	}
	/* Accepts given before the send leave before it; a drop need not. */
	if (s->n_deferred > 0 && emit_deferred(q) < 0) {
		set_error(q, "sending: out of memory");
		return -1;
	}
	if (!nfq_sender_has_room(snd, len))
		send_tx(q);
	if (nfq_sender_add(snd, data, len, mark, scope, s->release_pos) < 0) {
		set_error(q, "sending: out of memory");
		return -1;
	}
	return 0;
}

void nfq_queue_link_retained(struct nfq_queue *q, struct nfq_packet *p)
{
	struct nfq_queue_priv *s = q->priv;
	p->next = NULL;
	p->prev = s->retained_tail;
	if (s->retained_tail)
		s->retained_tail->next = p;
	else
		s->retained = p;
	s->retained_tail = p;
}

void nfq_queue_unlink_retained(struct nfq_queue *q, struct nfq_packet *p)
{
	struct nfq_queue_priv *s = q->priv;
	if (p->prev)
		p->prev->next = p->next;
	else if (s->retained == p)
		s->retained = p->next;
	if (p->next)
		p->next->prev = p->prev;
	else if (s->retained_tail == p)
		s->retained_tail = p->prev;
	p->prev = p->next = NULL;
}

/*
 * The kernel stamps received packets only while some socket asked for
 * timestamps, and that costs every packet on the host a clock read. Only
 * packets the host received (hooks up to FORWARD) can carry a receive time,
 * so the queue asks when it first sees one: a queue on output hooks never
 * makes the host pay. The kernel switches stamping on in deferred work, so
 * the first such packets may still have none.
 */
static void ask_timestamps(struct nfq_queue *q)
{
	int on = 1;
	setsockopt(q->fd, SOL_SOCKET, SO_TIMESTAMP, &on, sizeof on);
	q->priv->asked_timestamps = 1;
}

static void handle_message(struct nfq_queue *q, const struct nlmsghdr *nlh,
			   size_t len)
{
	struct nfq_queue_priv *s = q->priv;
	if (nlh->nlmsg_type == NLMSG_ERROR) {
		const struct nlmsgerr *err = mnl_nlmsg_get_payload(nlh);
		if (nlh->nlmsg_len < mnl_nlmsg_size(sizeof *err))
			return;
		if (s->ack_seq && nlh->nlmsg_seq == s->ack_seq) {
			s->ack_err = -err->error;
			s->ack_seen = 1;
		} else if (err->error) {
			q->stats.verdict_errors++;
		}
		return;
	}
	if (nlh->nlmsg_type != ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET) || s->discard_packets)
		return;
	struct nfq_packet *p = &q->pkts[q->count];
	if (nfq_packet_parse(p, nlh, len) < 0) {
		q->stats.verdict_errors++;
		return;
	}
	p->queue = q;
	q->count++;
	q->stats.received++;
	if (!s->asked_timestamps && p->hook <= NF_INET_FORWARD)
		ask_timestamps(q);
}

/*
 * One recvmmsg() into the free receive buffers; packets join the batch.
 * With in_recv, it waits inside recvmmsg() itself, for as long as the
 * socket's SO_RCVTIMEO, instead of in poll().
 */
static int receive_some(struct nfq_queue *q, int timeout_ms, int in_recv)
{
	struct nfq_queue_priv *s = q->priv;
	if (q->pos >= q->count) {
		q->pos = q->count = 0;
		s->rx_used = 0;
	}
	if (s->rx_used >= NFQ_BATCH_SLOTS)
		return 0;
	if (timeout_ms != 0 && !in_recv) {
		struct pollfd pfd = { .fd = q->fd, .events = POLLIN };
		int r = poll(&pfd, 1, timeout_ms);
		if (r <= 0)
			return r;
	}
	int n;
	for (;;) {
		n = recvmmsg(q->fd, s->mmsg + s->rx_used, NFQ_BATCH_SLOTS - s->rx_used,
			     in_recv ? MSG_WAITFORONE : MSG_DONTWAIT, NULL);
		if (n >= 0)
			break;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return 0;
		if (errno == ENOBUFS) {
			/* The kernel dropped messages for us; what is left is still good. */
			q->stats.enobufs++;
			continue;
		}
		if (errno != EINTR || timeout_ms == 0)
			return -1;
	}
	for (int i = 0; i < n; i++) {
		struct mmsghdr *m = &s->mmsg[s->rx_used + i];
		const struct nlmsghdr *nlh = m->msg_hdr.msg_iov->iov_base;
		int len = (int)m->msg_len;
		while (mnl_nlmsg_ok(nlh, len) && q->count < NFQ_BATCH_SLOTS) {
			handle_message(q, nlh, (size_t)len);
			nlh = mnl_nlmsg_next(nlh, &len);
		}
	}
	s->rx_used += (unsigned)n;
	return n;
}

static int receive(struct nfq_queue *q, int timeout_ms, int in_recv)
{
	if (q->queue_num < 0) {
		errno = ENOTCONN;
		set_error(q, "the queue is not bound");
		return -1;
	}
	if (receive_some(q, timeout_ms, in_recv) < 0) {
		set_error(q, "receiving from the queue: %s", strerror(errno));
		return -1;
	}
	if (q->count > q->pos)
		q->in_dispatch = 1;
	return (int)(q->count - q->pos);
}

int nfq_queue_receive(struct nfq_queue *q, int timeout_ms)
{
	return receive(q, timeout_ms, 0);
}

int nfq_queue_receive_in_recv(struct nfq_queue *q, int timeout_ms)
{
	struct nfq_queue_priv *s = q->priv;
	if (s->rcvtimeo_ms != timeout_ms) {
		struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
		if (setsockopt(q->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) {
			set_error(q, "setting the receive timeout: %s", strerror(errno));
			return -1;
		}
		s->rcvtimeo_ms = timeout_ms;
	}
	return receive(q, timeout_ms, 1);
}

void nfq_queue_finish_current(struct nfq_queue *q)
{
	if (q->pos > 0 && q->pos <= q->count)
		nfq_packet_finish(&q->pkts[q->pos - 1]);
}

/* Give the fallback verdict to every packet of the batch not dispatched yet. */
static void finish_batch(struct nfq_queue *q)
{
	while (q->pos < q->count)
		nfq_packet_finish(&q->pkts[q->pos++]);
}

/* What config_request() does with packets that arrive before its ack. */
enum early_packets {
	EARLY_KEEP,		/* binding: they join the batch */
	EARLY_FALLBACK,		/* they get the fallback verdict */
	EARLY_DISCARD		/* unbinding: the kernel dropped them already */
};

/*
 * Send a config request and wait for its ack. The kernel applies the request
 * inside sendmsg() and then queues the ack behind the packets already in the
 * socket: what early says is done with those.
 */
static int config_request(struct nfq_queue *q, struct nlmsghdr *nlh,
			  enum early_packets early)
{
	struct nfq_queue_priv *s = q->priv;
	nlh->nlmsg_flags |= NLM_F_ACK;
	nlh->nlmsg_seq = ++s->seq;
	s->ack_seq = nlh->nlmsg_seq;
	s->ack_seen = 0;
	s->ack_err = 0;
	if (send_all(q, nlh, nlh->nlmsg_len) < 0) {
		s->ack_seq = 0;
		return -1;
	}
	s->discard_packets = early == EARLY_DISCARD;
	int waited = 0;
	while (!s->ack_seen) {
		if (early == EARLY_FALLBACK)
			finish_batch(q);
		else if (early == EARLY_KEEP && s->rx_used >= NFQ_BATCH_SLOTS)
			break;
		int n = receive_some(q, 100, 0);
		if (n < 0 && errno != EINTR)
			break;
		if (n == 0 && (waited += 100) >= ACK_TIMEOUT_MS)
			break;
	}
	s->discard_packets = 0;
	s->ack_seq = 0;
	if (!s->ack_seen) {
		/*
		 * Packets reach only a bound queue: with some in the batch, the
		 * bind was done, its ack waits behind them or was lost to an
		 * overrun.
		 */
		if (early == EARLY_KEEP && q->count > 0)
			return 0;
		errno = ETIMEDOUT;
		return -1;
	}
	if (s->ack_err) {
		errno = s->ack_err;
		return -1;
	}
	return 0;
}

static uint32_t default_sock_len(uint32_t max_len, uint32_t range)
{
	/* Room for a full queue of packets of the copied size, plus skb overhead. */
	uint64_t per_packet = (uint64_t)(range < 2048 ? range : 2048) + 2048;
	uint64_t n = (uint64_t)max_len * per_packet;
	if (n < (1u << 22))
		n = 1u << 22;
	if (n > (1u << 30))
		n = 1u << 30;
	return (uint32_t)n;
}

static void set_rcvbuf(int fd, uint32_t bytes)
{
	int v = (int)(bytes > INT32_MAX ? INT32_MAX : bytes);
	/* FORCE passes net.core.rmem_max for root; otherwise take what we get. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof v) < 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
}

static int alloc_batch(struct nfq_queue *q, uint32_t range)
{
	struct nfq_queue_priv *s = q->priv;
	size_t slot = ((size_t)range + MSG_OVERHEAD + 4095) & ~(size_t)4095;
	if (s->rx && s->slot_size == slot)
		return 0;
	uint8_t *rx = malloc(slot * NFQ_BATCH_SLOTS);
	if (!rx)
		return -1;
	free(s->rx);
	s->rx = rx;
	s->slot_size = slot;
	for (unsigned i = 0; i < NFQ_BATCH_SLOTS; i++) {
		s->iov[i].iov_base = rx + i * slot;
		s->iov[i].iov_len = slot;
		memset(&s->mmsg[i], 0, sizeof s->mmsg[i]);
		s->mmsg[i].msg_hdr.msg_iov = &s->iov[i];
		s->mmsg[i].msg_hdr.msg_iovlen = 1;
	}
	if (!q->pkts && !(q->pkts = get_slots()))
		return -1;
	return 0;
}

/* The bytes the kernel copies per packet for a copy mode and range. */
static uint32_t copy_range(uint32_t mode, uint32_t range)
{
	if (mode == NFQ_COPY_META)
		return 0;
	return range < NFQ_MAX_COPY_RANGE ? range : NFQ_MAX_COPY_RANGE;
}

struct nfq_queue *nfq_queue_open_offline(uint32_t mode, uint32_t range)
{
	if ((mode != NFQ_COPY_META && mode != NFQ_COPY_PACKET) || range < 1 || range > 65535) {
		errno = EINVAL;
		return NULL;
	}
	struct nfq_queue *q = new_queue(-1);
	if (!q)
		return NULL;
	struct nfq_queue_priv *s = q->priv;
	s->offline = 1;
	s->mode = mode;
	q->range = copy_range(mode, range);
	if (alloc_batch(q, q->range) < 0) {
		free(s->rx);
		free(s);
		free(q);
		errno = ENOMEM;
		return NULL;
	}
	q->queue_num = 0;
	return q;
}

/* Add a packet to an offline queue's batch, copying what the copy mode and range let through. */
int nfq_queue_offline_push(struct nfq_queue *q, const struct nfq_packet *meta,
			   const uint8_t *payload, uint32_t len)
{
	struct nfq_queue_priv *s = q->priv;
	if (!s->offline) {
		errno = EINVAL;
		return -1;
	}
	if (q->pos >= q->count) {
		q->pos = q->count = 0;
		s->rx_used = 0;
	}
	if (q->count >= NFQ_BATCH_SLOTS) {
		errno = ENOBUFS;
		return -1;
	}
	struct nfq_packet *p = &q->pkts[q->count];
	uint32_t gen = p->gen;
	*p = *meta;
	p->gen = gen;
	p->state = NFQ_PKT_PENDING;
	p->queue = q;
	p->prev = p->next = NULL;
	p->new_payload = p->own_payload = NULL;
	p->l2hdr = NULL;
	p->secctx = NULL;
	p->l2hdr_len = p->secctx_len = 0;
	p->flags &= ~(uint32_t)(NFQ_PF_MARK_SET | NFQ_PF_PAYLOAD_SET | NFQ_PF_CONNMARK_SET |
				NFQ_PF_RETAINED | NFQ_PF_HEAP);
	p->cap_len = len;
	p->payload = NULL;
	p->payload_len = 0;
	if (s->mode == NFQ_COPY_PACKET && payload) {
		uint32_t n = len < q->range ? len : q->range;
		uint8_t *slot = s->rx + (size_t)q->count * s->slot_size;
		memcpy(slot, payload, n);
		p->payload = slot;
		p->payload_len = n;
	}
	q->count++;
	q->in_dispatch = 1;
	q->stats.received++;
	return 0;
}

static int is_net_admin(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	unsigned long long caps = 0;
	if (!f)
		return 1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "CapEff: %llx", &caps) == 1)
			break;
	fclose(f);
	return (caps >> 12) & 1;	/* CAP_NET_ADMIN */
}

/* The portid holding a queue, from the kernel's per-namespace listing. */
static long queue_owner(uint32_t queue_num)
{
	FILE *f = fopen(NFQ_KERNEL_STATS_PATH, "r");
	unsigned num;
	long portid, owner = -1;
	if (!f)
		return -1;
	while (fscanf(f, "%u %ld %*[^\n]", &num, &portid) == 2)
		if (num == queue_num) {
			owner = portid;
			break;
		}
	fclose(f);
	return owner;
}

int nfq_queue_bind(struct nfq_queue *q, uint32_t queue_num, uint32_t mode,
		   uint32_t range, uint32_t max_len, uint32_t sock_len,
		   uint32_t flags)
{
	if (q->queue_num >= 0) {
		errno = EALREADY;
		set_error(q, "this queue object is already bound to queue %d", q->queue_num);
		return -1;
	}
	if (queue_num > 65535 || (mode != NFQ_COPY_META && mode != NFQ_COPY_PACKET) ||
	    range < 1 || range > 65535 || max_len < 1 || flags >= NFQA_CFG_F_MAX) {
		errno = EINVAL;
		set_error(q, "invalid bind parameters");
		return -1;
	}
	/* The kernel copies at most NFQ_MAX_COPY_RANGE bytes, whatever is asked. */
	range = copy_range(mode, range);
	if (alloc_batch(q, range) < 0) {
		set_error(q, "out of memory");
		return -1;
	}
	set_rcvbuf(q->fd, sock_len ? sock_len : default_sock_len(max_len, range));

	/*
	 * Bind, copy mode, range, length and flags travel in one message: the
	 * kernel applies them together, so no packet meets the queue while it is
	 * still in COPY_NONE (which drops).
	 */
	char buf[MNL_SOCKET_BUFFER_SIZE];
	memset(buf, 0, sizeof buf);	/* attribute padding goes to the kernel too */
	struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue_num);
	nfq_nlmsg_cfg_put_cmd(nlh, AF_UNSPEC, NFQNL_CFG_CMD_BIND);
	nfq_nlmsg_cfg_put_params(nlh, (uint8_t)mode, (int)range);
	nfq_nlmsg_cfg_put_qmaxlen(nlh, max_len);
	if (flags) {
		mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(flags));
		mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(flags));
	}
	int rc = config_request(q, nlh, EARLY_KEEP);
	/* Asking for conntrack loads its netlink module; the kernel then asks us to retry. */
	for (int retry = 0; rc < 0 && errno == EAGAIN && retry < 3; retry++)
		rc = config_request(q, nlh, EARLY_KEEP);
	if (rc < 0) {
		int err = errno;
		if (err == EPERM && !is_net_admin()) {
			set_error(q, "binding queue %u needs root or CAP_NET_ADMIN", queue_num);
		} else if (err == EPERM || err == EBUSY) {
			long owner = queue_owner(queue_num);
			if (owner >= 0)
				set_error(q, "queue %u is already bound by another socket (portid %ld); stop that program or pick another --queue-num",
					  queue_num, owner);
			else
				set_error(q, "queue %u is already bound by another socket; stop that program or pick another queue",
					  queue_num);
			err = EBUSY;
		} else if (err == EOPNOTSUPP && (flags & NFQ_FLAG_CONNTRACK)) {
			set_error(q, "binding queue %u: this kernel cannot give conntrack data to queues (it needs CONFIG_NETFILTER_NETLINK_GLUE_CT); bind without conntrack",
				  queue_num);
		} else if (err == EOPNOTSUPP && flags) {
			set_error(q, "binding queue %u: this kernel does not support the queue flags asked for (secctx needs CONFIG_NETWORK_SECMARK)",
				  queue_num);
		} else {
			set_error(q, "cannot bind queue %u: %s", queue_num, strerror(err));
		}
		errno = err;
		return -1;
	}
	q->queue_num = (int32_t)queue_num;
	q->flags = flags;
	q->range = range;
	q->priv->unbound_stats_valid = 0;
	return 0;
}

/*
 * Move every retained packet into a fresh heap packet that no Lua object
 * owns yet, for a new Lua state to adopt. The old copies become empty
 * husks with a verdict, so their finalizers only free them. With out NULL,
 * only count them.
 */
int nfq_queue_hand_over(struct nfq_queue *q, struct nfq_packet **out, int max)
{
	struct nfq_queue_priv *s = q->priv;
	int n = 0;
	struct nfq_packet *old = s->retained;
	if (!out) {
		for (; old; old = old->next)
			n++;
		return n;
	}
	while (old && n < max) {
		struct nfq_packet *next = old->next;
		struct nfq_packet *p = malloc(sizeof *p);
		if (!p)
			break;
		*p = *old;
		p->gen = 0;
		p->flags &= ~(uint32_t)NFQ_PF_RETAINED;
		if (p->prev)
			p->prev->next = p;
		else
			s->retained = p;
		if (p->next)
			p->next->prev = p;
		else
			s->retained_tail = p;
		old->prev = old->next = NULL;
		old->own_payload = old->new_payload = NULL;
		old->payload = old->l2hdr = NULL;
		old->secctx = NULL;
		old->flags &= ~(uint32_t)NFQ_PF_PAYLOAD_SET;
		old->state = NFQ_PKT_VERDICTED;
		old->queue = NULL;
		out[n++] = p;
		old = next;
	}
	return n;
}

int nfq_queue_kernel_stats(const struct nfq_queue *q, struct nfq_kernel_stats *out)
{
	memset(out, 0, sizeof *out);
	if (q->queue_num < 0 && q->priv->unbound_stats_valid) {
		*out = q->priv->unbound_stats;
		return 0;
	}
	if (q->priv->offline || q->queue_num < 0) {
		errno = ENOENT;
		return -1;
	}
	/* The file is root's alone (0440): a descriptor opened before giving up
	 * root is read from the start again each time. */
	int stats_fd = q->priv->stats_fd;
	FILE *f = stats_fd >= 0 && lseek(stats_fd, 0, SEEK_SET) == 0 ? fdopen(dup(stats_fd), "r")
		: fopen(NFQ_KERNEL_STATS_PATH, "r");
	unsigned num;
	long long waiting, qdrop, udrop;
	int rc = -1;
	if (!f)
		return -1;
	while (fscanf(f, "%u %*d %lld %*d %*d %lld %lld %*[^\n]", &num, &waiting, &qdrop, &udrop) == 4)
		if ((int32_t)num == q->queue_num) {
			out->waiting = waiting;
			out->queue_dropped = qdrop;
			out->user_dropped = udrop;
			rc = 0;
			break;
		}
	fclose(f);
	if (rc < 0)
		errno = ENOENT;
	return rc;
}

void nfq_queue_set_stats_fd(struct nfq_queue *q, int fd)
{
	struct nfq_queue_priv *s = q->priv;
	if (s->stats_fd >= 0)
		close(s->stats_fd);
	s->stats_fd = fd;
}

static void fallback_retained(struct nfq_queue *q)
{
	struct nfq_queue_priv *s = q->priv;
	while (s->retained) {
		struct nfq_packet *p = s->retained;
		nfq_packet_fallback(p);
		if (s->retained == p)	/* the verdict could not be sent */
			nfq_queue_unlink_retained(q, p);
		p->state = NFQ_PKT_VERDICTED;
		p->queue = NULL;
	}
}

/* Send a config message for the bound queue: a queue length, or flags. */
static int configure(struct nfq_queue *q, int maxlen, uint32_t flags, uint32_t mask)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	memset(buf, 0, sizeof buf);	/* attribute padding goes to the kernel too */
	struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, (uint32_t)q->queue_num);
	if (maxlen >= 0)
		nfq_nlmsg_cfg_put_qmaxlen(nlh, (uint32_t)maxlen);
	if (mask) {
		mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(flags));
		mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(mask));
	}
	return config_request(q, nlh, EARLY_FALLBACK);
}

/*
 * Stop the kernel from queueing: with a queue length of 0 it gives new
 * packets the fallback verdict itself (fail-open accepts them; a full queue
 * without it drops and counts them). Every packet it still holds is then in
 * the socket already, or was dropped and counted. The flag goes first: in
 * one message the kernel would set the length before it.
 */
static int stop_queueing(struct nfq_queue *q)
{
	uint32_t verdict = q->fallback & NFQ_VERDICT_MASK;
	uint32_t fail_open = verdict == NFQ_ACCEPT || verdict == NFQ_STOP ? NFQ_FLAG_FAIL_OPEN : 0;
	if (configure(q, -1, fail_open, NFQ_FLAG_FAIL_OPEN) < 0)
		return -1;
	return configure(q, 0, 0, 0);
}

/*
 * The kernel drops what is still queued at unbind, and refuses verdicts
 * after it: every packet gets the fallback verdict before, and packets read
 * after it count for nothing.
 */
int nfq_queue_unbind(struct nfq_queue *q)
{
	struct nfq_queue_priv *s = q->priv;
	if (q->queue_num < 0)
		return 0;
	finish_batch(q);
	fallback_retained(q);
	if (s->offline) {
		q->in_dispatch = 0;
		q->queue_num = -1;
		return 0;
	}
	/* The fallback verdicts go out in batches, as in a dispatch. */
	q->in_dispatch = 1;
	int stopped = stop_queueing(q) == 0;
	for (int round = 0; stopped || round < DRAIN_ROUNDS; round++) {
		finish_batch(q);
		if (receive_some(q, 0, 0) <= 0)
			break;
	}
	finish_batch(q);
	nfq_queue_flush(q);
	s->unbound_stats_valid = nfq_queue_kernel_stats(q, &s->unbound_stats) == 0;

	char buf[MNL_SOCKET_BUFFER_SIZE];
	memset(buf, 0, sizeof buf);
	struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, (uint32_t)q->queue_num);
	nfq_nlmsg_cfg_put_cmd(nlh, AF_UNSPEC, NFQNL_CFG_CMD_UNBIND);
	int rc = config_request(q, nlh, EARLY_DISCARD);
	q->queue_num = -1;
	q->pos = q->count = 0;
	s->rx_used = 0;
	if (rc < 0)
		set_error(q, "unbinding: %s", strerror(errno));
	return rc;
}

void nfq_queue_close(struct nfq_queue *q)
{
	if (!q)
		return;
	struct nfq_queue_priv *s = q->priv;
	nfq_queue_unbind(q);
	if (s->own_fd)
		close(q->fd);
	if (s->stats_fd >= 0)
		close(s->stats_fd);
	nfq_queue_set_sender(q, NULL);
	if (q->pkts)
		put_slots(q->pkts);
	nfq_queue_clear_records(q);
	free(s->records);
	free(s->rx);
	free(s->tx);
	free(s);
	free(q);
}

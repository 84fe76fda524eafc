/*
 * nfq_packet.c: one queued packet: parsing the kernel's message, verdicts,
 * payload rewrites and retained copies.
 */
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netfilter/nfnetlink_queue.h>

#include "nfq_internal.h"

/*
 * Index the attributes of a packet message into tb. Every byte after the
 * headers must belong to a well-formed attribute; unknown types are skipped.
 */
static int collect_attrs(const struct nlmsghdr *nlh, const struct nlattr **tb)
{
	const char *end = (const char *)nlh + nlh->nlmsg_len;
	const struct nlattr *attr = mnl_nlmsg_get_payload_offset(nlh, sizeof(struct nfgenmsg));
	while ((const char *)attr < end) {
		if (!mnl_attr_ok(attr, (int)(end - (const char *)attr)))
			return -1;
		if (mnl_attr_type_valid(attr, NFQA_MAX) > 0)
			tb[mnl_attr_get_type(attr)] = attr;
		attr = mnl_attr_next(attr);
	}
	return 0;
}

/* Index the attributes nested in attr (types 1..max) into tb. */
static int collect_nested(const struct nlattr *attr, const struct nlattr **tb, int max)
{
	const char *end = (const char *)mnl_attr_get_payload(attr) + mnl_attr_get_payload_len(attr);
	const struct nlattr *a = mnl_attr_get_payload(attr);
	while ((const char *)a < end) {
		if (!mnl_attr_ok(a, (int)(end - (const char *)a)))
			return -1;
		int type = mnl_attr_get_type(a);
		if (type <= max)
			tb[type] = a;
		a = mnl_attr_next(a);
	}
	return 0;
}

static int attr_u16(const struct nlattr *attr, uint16_t *out)
{
	if (!attr || mnl_attr_get_payload_len(attr) < sizeof(uint16_t))
		return 0;
	uint16_t v;
	memcpy(&v, mnl_attr_get_payload(attr), sizeof v);
	*out = ntohs(v);
	return 1;
}

static int attr_u32(const struct nlattr *attr, uint32_t *out)
{
	if (!attr || mnl_attr_get_payload_len(attr) < sizeof(uint32_t))
		return 0;
	uint32_t v;
	memcpy(&v, mnl_attr_get_payload(attr), sizeof v);
	*out = ntohl(v);
	return 1;
}

int nfq_packet_parse(struct nfq_packet *p, const void *msg, size_t len)
{
	const struct nlmsghdr *nlh = msg;
	const struct nlattr *tb[NFQA_MAX + 1] = { 0 };

	if (!msg || len < sizeof(*nlh) || nlh->nlmsg_len > len ||
	    nlh->nlmsg_len < mnl_nlmsg_size(sizeof(struct nfgenmsg)) ||
	    nlh->nlmsg_type != ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET)) {
		errno = EINVAL;
		return -1;
	}
	if (collect_attrs(nlh, tb) < 0) {
		errno = EINVAL;
		return -1;
	}
	const struct nlattr *hdr_attr = tb[NFQA_PACKET_HDR];
	if (!hdr_attr ||
	    mnl_attr_get_payload_len(hdr_attr) < sizeof(struct nfqnl_msg_packet_hdr)) {
		errno = EINVAL;
		return -1;
	}

	uint32_t gen = p->gen;
	memset(p, 0, sizeof *p);
	p->gen = gen;

	struct nfqnl_msg_packet_hdr ph;
	memcpy(&ph, mnl_attr_get_payload(hdr_attr), sizeof ph);
	p->id = ntohl(ph.packet_id);
	p->hw_protocol = ntohs(ph.hw_protocol);
	p->hook = ph.hook;

	attr_u32(tb[NFQA_MARK], &p->mark);
	attr_u32(tb[NFQA_IFINDEX_INDEV], &p->indev);
	attr_u32(tb[NFQA_IFINDEX_OUTDEV], &p->outdev);
	attr_u32(tb[NFQA_IFINDEX_PHYSINDEV], &p->physindev);
	attr_u32(tb[NFQA_IFINDEX_PHYSOUTDEV], &p->physoutdev);
	if (attr_u32(tb[NFQA_UID], &p->uid))
		p->flags |= NFQ_PF_UID;
	if (attr_u32(tb[NFQA_GID], &p->gid))
		p->flags |= NFQ_PF_GID;

	const struct nlattr *ts = tb[NFQA_TIMESTAMP];
	if (ts && mnl_attr_get_payload_len(ts) >= sizeof(struct nfqnl_msg_packet_timestamp)) {
		uint64_t sec, usec;
		memcpy(&sec, mnl_attr_get_payload(ts), 8);
		memcpy(&usec, (const char *)mnl_attr_get_payload(ts) + 8, 8);
		p->ts_sec = (int64_t)be64toh(sec);
		p->ts_usec = (int64_t)be64toh(usec);
		p->flags |= NFQ_PF_TIMESTAMP;
	}

	const struct nlattr *hw = tb[NFQA_HWADDR];
	if (hw && mnl_attr_get_payload_len(hw) >= sizeof(struct nfqnl_msg_packet_hw)) {
		struct nfqnl_msg_packet_hw h;
		memcpy(&h, mnl_attr_get_payload(hw), sizeof h);
		uint16_t n = ntohs(h.hw_addrlen);
		if (n > 0 && n <= sizeof p->hw_addr) {
			memcpy(p->hw_addr, h.hw_addr, n);
			p->hw_addrlen = n;
			p->flags |= NFQ_PF_HW;
		}
	}

	if (tb[NFQA_CT]) {
		const struct nlattr *ct[CTA_MAX + 1] = { 0 };
		if (collect_nested(tb[NFQA_CT], ct, CTA_MAX) < 0) {
			errno = EINVAL;
			return -1;
		}
		attr_u32(ct[CTA_ID], &p->ct_id);
		attr_u32(ct[CTA_MARK], &p->ct_mark);
		attr_u32(ct[CTA_STATUS], &p->ct_status);
		p->flags |= NFQ_PF_CT;
	}
	if (attr_u32(tb[NFQA_CT_INFO], &p->ct_info))
		p->flags |= NFQ_PF_CT_INFO;
	if (attr_u32(tb[NFQA_SKB_INFO], &p->skbinfo))
		p->flags |= NFQ_PF_SKBINFO;
	if (attr_u32(tb[NFQA_PRIORITY], &p->priority))
		p->flags |= NFQ_PF_PRIORITY;
	if (tb[NFQA_VLAN]) {
		const struct nlattr *vlan[NFQA_VLAN_MAX + 1] = { 0 };
		if (collect_nested(tb[NFQA_VLAN], vlan, NFQA_VLAN_MAX) < 0) {
			errno = EINVAL;
			return -1;
		}
		if (attr_u16(vlan[NFQA_VLAN_PROTO], &p->vlan_proto) &&
		    attr_u16(vlan[NFQA_VLAN_TCI], &p->vlan_tci))
			p->flags |= NFQ_PF_VLAN;
	}
	const struct nlattr *l2 = tb[NFQA_L2HDR];
	if (l2) {
		p->l2hdr = mnl_attr_get_payload(l2);
		p->l2hdr_len = (uint16_t)mnl_attr_get_payload_len(l2);
	}
	const struct nlattr *sec = tb[NFQA_SECCTX];
	if (sec) {
		p->secctx = mnl_attr_get_payload(sec);
		p->secctx_len = (uint16_t)mnl_attr_get_payload_len(sec);
		/* The kernel counts the terminating NUL. */
		while (p->secctx_len > 0 && p->secctx[p->secctx_len - 1] == '\0')
			p->secctx_len--;
	}

	const struct nlattr *pl = tb[NFQA_PAYLOAD];
	if (pl) {
		p->payload = mnl_attr_get_payload(pl);
		p->payload_len = mnl_attr_get_payload_len(pl);
	}
	p->cap_len = p->payload_len;
	attr_u32(tb[NFQA_CAP_LEN], &p->cap_len);
	p->state = NFQ_PKT_PENDING;
	return 0;
}

int nfq_packet_verdict(struct nfq_packet *p, uint32_t verdict)
{
	if (p->state != NFQ_PKT_PENDING) {
		errno = EALREADY;
		return -1;
	}
	struct nfq_queue *q = p->queue;
	if (!q || q->queue_num < 0) {
		errno = ENOTCONN;
		return -1;
	}
	if (nfq_queue_put_verdict(q, p, verdict) < 0)
		return -1;
	p->state = NFQ_PKT_VERDICTED;
	switch (verdict & NF_VERDICT_MASK) {
	case NF_ACCEPT:
	case NF_STOP: q->stats.accepted++; break;
	case NF_DROP: q->stats.dropped++; break;
	case NF_REPEAT: q->stats.repeated++; break;
	default: q->stats.requeued++; break;
	}
	if (p->flags & NFQ_PF_RETAINED)
		nfq_queue_unlink_retained(q, p);
	if (!q->in_dispatch)
		nfq_queue_flush(q);
	return 0;
}

void nfq_packet_fallback(struct nfq_packet *p)
{
	if (p->state != NFQ_PKT_PENDING || !p->queue)
		return;
	struct nfq_queue *q = p->queue;
	p->flags |= NFQ_PF_FALLBACK;
	if (nfq_packet_verdict(p, q->fallback) == 0)
		q->stats.fallback++;
}

void nfq_packet_finish(struct nfq_packet *p)
{
	if (p->flags & NFQ_PF_HEAP) {
		/* A handed-over packet: the script may keep it like a slot's copy. */
		if (p->flags & NFQ_PF_RETAINED)
			return;
		nfq_packet_fallback(p);
		p->gen++;
		return;
	}
	nfq_packet_fallback(p);
	free(p->new_payload);
	p->new_payload = NULL;
	p->gen++;
}

int nfq_packet_set_payload(struct nfq_packet *p, const void *data, size_t len)
{
	if (p->state != NFQ_PKT_PENDING) {
		errno = EALREADY;
		return -1;
	}
	if (len > NFQ_MAX_PAYLOAD) {
		errno = EMSGSIZE;
		return -1;
	}
	/* One spare byte so that an empty payload is still a valid allocation. */
	uint8_t *copy = malloc(len + 1);
	if (!copy)
		return -1;
	memcpy(copy, data, len);
	free(p->new_payload);
	p->new_payload = copy;
	p->new_payload_len = (uint32_t)len;
	p->flags |= NFQ_PF_PAYLOAD_SET;
	return 0;
}

/*
 * The copy owns its payload (own_payload) and its rewrite (new_payload); the
 * Lua object that asked for it frees it through nfq_packet_release() when it
 * is collected. The slot keeps nothing.
 */
struct nfq_packet *nfq_packet_retain(struct nfq_packet *p)
{
	if (p->flags & NFQ_PF_HEAP) {
		p->flags |= NFQ_PF_RETAINED;
		return p;
	}
	struct nfq_packet *c = malloc(sizeof *c);
	if (!c)
		return NULL;
	*c = *p;
	c->gen = 0;
	c->flags |= NFQ_PF_RETAINED | NFQ_PF_HEAP;
	c->prev = c->next = NULL;
	/* One buffer holds what pointed into the receive buffer. */
	c->own_payload = malloc((size_t)p->payload_len + p->l2hdr_len + p->secctx_len + 1);
	if (!c->own_payload) {
		free(c);
		return NULL;
	}
	uint8_t *at = c->own_payload;
	if (p->payload) {
		memcpy(at, p->payload, p->payload_len);
		c->payload = at;
		at += p->payload_len;
	}
	if (p->l2hdr) {
		memcpy(at, p->l2hdr, p->l2hdr_len);
		c->l2hdr = at;
		at += p->l2hdr_len;
	}
	if (p->secctx) {
		memcpy(at, p->secctx, p->secctx_len);
		c->secctx = (const char *)at;
	}
	p->new_payload = NULL;
	p->flags &= ~(uint32_t)NFQ_PF_PAYLOAD_SET;
	if (p->state == NFQ_PKT_PENDING) {
		p->state = NFQ_PKT_MOVED;
		if (c->queue)
			nfq_queue_link_retained(c->queue, c);
	}
	return c;
}

void nfq_packet_release(struct nfq_packet *p)
{
	if (!p || !(p->flags & NFQ_PF_HEAP))
		return;
	nfq_packet_fallback(p);
	if (p->queue && p->state == NFQ_PKT_PENDING)
		nfq_queue_unlink_retained(p->queue, p);
	free(p->new_payload);
	free(p->own_payload);
	free(p);
}

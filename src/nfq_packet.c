/*
 * nfq_packet.c: one queued packet: parsing the kernel's message, verdicts,
 * payload rewrites and retained copies.
 */
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <linux/netlink.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netfilter/nfnetlink_queue.h>

#include "nfq_internal.h"

/*
 * Netlink attributes, read inline: libmnl's accessors are calls into a shared
 * library, several per attribute, and this runs for every packet.
 */
static inline uint16_t attr_len(const struct nlattr *a)
{
	return (uint16_t)(a->nla_len - NLA_HDRLEN);
}

static inline const void *attr_data(const struct nlattr *a)
{
	return (const char *)a + NLA_HDRLEN;
}

/*
 * The attributes of one message or nest, by type. Only the types in present
 * are set in tb, so tb needs no clearing per packet.
 */
struct attr_index {
	uint32_t present;
	const struct nlattr *tb[32];
};
_Static_assert(NFQA_MAX < 32 && CTA_MAX < 32 && NFQA_VLAN_MAX < 32, "attr_index.present has a bit per type");

/*
 * Index the attributes in [attr, end): every byte must belong to a
 * well-formed attribute; types above max are skipped.
 */
static int index_attrs(const struct nlattr *attr, const char *end, int max, struct attr_index *ix)
{
	ix->present = 0;
	while ((const char *)attr < end) {
		size_t room = (size_t)(end - (const char *)attr);
		if (room < sizeof(*attr) || attr->nla_len < sizeof(*attr) || attr->nla_len > room)
			return -1;
		int type = attr->nla_type & NLA_TYPE_MASK;
		if (type <= max) {
			ix->tb[type] = attr;
			ix->present |= 1u << type;
		}
		attr = (const struct nlattr *)((const char *)attr + NLA_ALIGN(attr->nla_len));
	}
	return 0;
}

static int index_nested(const struct nlattr *nest, int max, struct attr_index *ix)
{
	return index_attrs(attr_data(nest), (const char *)attr_data(nest) + attr_len(nest), max, ix);
}

static inline const struct nlattr *attr_get(const struct attr_index *ix, int type)
{
	return ix->present & (1u << type) ? ix->tb[type] : NULL;
}

static int attr_u16(const struct nlattr *attr, uint16_t *out)
{
	if (!attr || attr_len(attr) < sizeof(uint16_t))
		return 0;
	uint16_t v;
	memcpy(&v, attr_data(attr), sizeof v);
	*out = ntohs(v);
	return 1;
}

static int attr_u32(const struct nlattr *attr, uint32_t *out)
{
	if (!attr || attr_len(attr) < sizeof(uint32_t))
		return 0;
	uint32_t v;
	memcpy(&v, attr_data(attr), sizeof v);
	*out = ntohl(v);
	return 1;
}

int nfq_packet_parse(struct nfq_packet *p, const void *msg, size_t len)
{
	const struct nlmsghdr *nlh = msg;
	struct attr_index ix;

	/* Where the attributes start: after the netlink and nfnetlink headers. */
	const size_t attrs_at = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(struct nfgenmsg));

	if (!msg || len < sizeof(*nlh) || nlh->nlmsg_len > len || nlh->nlmsg_len < attrs_at ||
	    nlh->nlmsg_type != ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET)) {
		errno = EINVAL;
		return -1;
	}
	if (index_attrs((const struct nlattr *)((const char *)nlh + attrs_at),
			(const char *)nlh + nlh->nlmsg_len, NFQA_MAX, &ix) < 0) {
		errno = EINVAL;
		return -1;
	}
	const struct nlattr *hdr_attr = attr_get(&ix, NFQA_PACKET_HDR);
	if (!hdr_attr || attr_len(hdr_attr) < sizeof(struct nfqnl_msg_packet_hdr)) {
		errno = EINVAL;
		return -1;
	}

	uint32_t gen = p->gen;
	memset(p, 0, sizeof *p);
	p->gen = gen;

	struct nfqnl_msg_packet_hdr ph;
	memcpy(&ph, attr_data(hdr_attr), sizeof ph);
	p->id = ntohl(ph.packet_id);
	p->hw_protocol = ntohs(ph.hw_protocol);
	p->hook = ph.hook;

	attr_u32(attr_get(&ix, NFQA_MARK), &p->mark);
	attr_u32(attr_get(&ix, NFQA_IFINDEX_INDEV), &p->indev);
	attr_u32(attr_get(&ix, NFQA_IFINDEX_OUTDEV), &p->outdev);
	attr_u32(attr_get(&ix, NFQA_IFINDEX_PHYSINDEV), &p->physindev);
	attr_u32(attr_get(&ix, NFQA_IFINDEX_PHYSOUTDEV), &p->physoutdev);
	if (attr_u32(attr_get(&ix, NFQA_UID), &p->uid))
		p->flags |= NFQ_PF_UID;
	if (attr_u32(attr_get(&ix, NFQA_GID), &p->gid))
		p->flags |= NFQ_PF_GID;

	const struct nlattr *ts = attr_get(&ix, NFQA_TIMESTAMP);
	if (ts && attr_len(ts) >= sizeof(struct nfqnl_msg_packet_timestamp)) {
		uint64_t sec, usec;
		memcpy(&sec, attr_data(ts), 8);
		memcpy(&usec, (const char *)attr_data(ts) + 8, 8);
		p->ts_sec = (int64_t)be64toh(sec);
		p->ts_usec = (int64_t)be64toh(usec);
		p->flags |= NFQ_PF_TIMESTAMP;
	}

	const struct nlattr *hw = attr_get(&ix, NFQA_HWADDR);
	if (hw && attr_len(hw) >= sizeof(struct nfqnl_msg_packet_hw)) {
		struct nfqnl_msg_packet_hw h;
		memcpy(&h, attr_data(hw), sizeof h);
		uint16_t n = ntohs(h.hw_addrlen);
		if (n > 0 && n <= sizeof p->hw_addr) {
			memcpy(p->hw_addr, h.hw_addr, n);
			p->hw_addrlen = n;
			p->flags |= NFQ_PF_HW;
		}
	}

	const struct nlattr *ct_attr = attr_get(&ix, NFQA_CT);
	if (ct_attr) {
		struct attr_index ct;
		if (index_nested(ct_attr, CTA_MAX, &ct) < 0) {
			errno = EINVAL;
			return -1;
		}
		attr_u32(attr_get(&ct, CTA_ID), &p->ct_id);
		attr_u32(attr_get(&ct, CTA_MARK), &p->ct_mark);
		attr_u32(attr_get(&ct, CTA_STATUS), &p->ct_status);
		p->flags |= NFQ_PF_CT;
	}
	if (attr_u32(attr_get(&ix, NFQA_CT_INFO), &p->ct_info))
		p->flags |= NFQ_PF_CT_INFO;
	if (attr_u32(attr_get(&ix, NFQA_SKB_INFO), &p->skbinfo))
		p->flags |= NFQ_PF_SKBINFO;
	if (attr_u32(attr_get(&ix, NFQA_PRIORITY), &p->priority))
		p->flags |= NFQ_PF_PRIORITY;
	const struct nlattr *vlan_attr = attr_get(&ix, NFQA_VLAN);
	if (vlan_attr) {
		struct attr_index vlan;
		if (index_nested(vlan_attr, NFQA_VLAN_MAX, &vlan) < 0) {
			errno = EINVAL;
			return -1;
		}
		if (attr_u16(attr_get(&vlan, NFQA_VLAN_PROTO), &p->vlan_proto) &&
		    attr_u16(attr_get(&vlan, NFQA_VLAN_TCI), &p->vlan_tci))
			p->flags |= NFQ_PF_VLAN;
	}
	const struct nlattr *l2 = attr_get(&ix, NFQA_L2HDR);
	if (l2) {
		p->l2hdr = attr_data(l2);
		p->l2hdr_len = (uint16_t)attr_len(l2);
	}
	const struct nlattr *sec = attr_get(&ix, NFQA_SECCTX);
	if (sec) {
		p->secctx = attr_data(sec);
		p->secctx_len = (uint16_t)attr_len(sec);
		/* The kernel counts the terminating NUL. */
		while (p->secctx_len > 0 && p->secctx[p->secctx_len - 1] == '\0')
			p->secctx_len--;
	}

	const struct nlattr *pl = attr_get(&ix, NFQA_PAYLOAD);
	if (pl) {
		p->payload = attr_data(pl);
		p->payload_len = attr_len(pl);
	}
	p->cap_len = p->payload_len;
	attr_u32(attr_get(&ix, NFQA_CAP_LEN), &p->cap_len);
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

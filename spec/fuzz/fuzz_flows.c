/*
 * fuzz_flows.c: libFuzzer target for the flow table and the TCP stream
 * bytes (nfq_flows.c). The first 4 bytes pick the table (max, stream
 * buffer size and count, end queue or not); the rest is a sequence of
 * operations: packets between a few endpoints (TCP with any flags, sequence
 * numbers and payload lengths, UDP, ICMP, other protocols, or raw bytes),
 * clock steps with expiry, removals and stream_done. Bytes given raw may
 * carry anything: after one, stream contents are no longer compared.
 * Checked after each: the live count matches the slots, never above max; a
 * flow found is live; an expiry with budget for all leaves none past its
 * timeout; stream bytes never exceed the buffer, and the bytes
 * in order are the ones sent at those sequence numbers (every segment
 * carries byte f(seq) at seq, so any overlap policy must give those).
 * Build: make fuzz. Replay without clang: make fuzz-replay.
 */
#include <stdlib.h>
#include <string.h>

#include "nfq_flows.h"
#include "nfq_internal.h"

struct input {
	const uint8_t *p;
	size_t left;
};

static unsigned take(struct input *in)
{
	if (!in->left)
		return 0;
	in->left--;
	return *in->p++;
}

static uint8_t seq_byte(uint32_t seq)
{
	return (uint8_t)(seq * 7 + (seq >> 8));
}

/* An IPv4 or IPv6 packet between endpoints a and b (0..3) into buf. */
static uint32_t build(uint8_t *buf, struct input *in)
{
	unsigned what = take(in), a = take(in) & 3, b = take(in) & 3;
	int v6 = what & 1;
	unsigned protos[] = { 6, 6, 6, 17, 1, 58, 47, 6 };
	unsigned proto = protos[(what >> 1) & 7];
	uint32_t hl = v6 ? 40 : 20;
	uint32_t seq = 1000u + (take(in) << 8 | take(in)) - 0x100;
	if (take(in) & 0x80)
		seq += 0xfffff000u;	/* around the wrap */
	uint8_t flags = (uint8_t)take(in);
	uint32_t n = take(in) % 80;
	uint32_t l4 = proto == 6 ? 20 : 8;
	uint32_t len = hl + l4 + n;
	memset(buf, 0, len);
	if (v6) {
		buf[0] = 0x60;
		nfq_put16(buf + 4, l4 + n);
		buf[6] = (uint8_t)proto;
		buf[8 + 15] = (uint8_t)(1 + a);
		buf[24 + 15] = (uint8_t)(1 + b);
	} else {
		buf[0] = 0x45;
		nfq_put16(buf + 2, len);
		buf[9] = (uint8_t)proto;
		buf[12] = 10, buf[15] = (uint8_t)(1 + a);
		buf[16] = 10, buf[19] = (uint8_t)(1 + b);
	}
	uint8_t *t = buf + hl;
	nfq_put16(t, 1000 + a);
	nfq_put16(t + 2, 1000 + b);
	if (proto == 6) {
		nfq_put32(t + 4, seq);
		t[12] = 0x50;
		t[13] = flags;
		uint32_t data_seq = seq + (flags & 2 ? 1 : 0);
		for (uint32_t i = 0; i < n; i++)
			t[20 + i] = seq_byte(data_seq + i);
	} else if (proto == 1 || proto == 58) {
		t[0] = proto == 1 ? 8 : 128;
	}
	return len;
}

static void check(struct nfq_flows *t)
{
	uint32_t live = 0;
	for (uint32_t i = 0; i < t->capacity; i++) {
		const struct nfq_flow *f = (const struct nfq_flow *)(t->slots + (size_t)i * t->stride);
		live += f->state == NFQ_FLOW_LIVE;
		if (f->state == NFQ_FLOW_ENDED || f->state == NFQ_FLOW_ENDING)
			abort();	/* drained after every operation */
	}
	if (live != t->count || live > t->max || t->streams_used > t->streams)
		abort();
}

static void drain(struct nfq_flows *t)
{
	while (nfq_flows_next_ended(t) >= 0)
		;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 4)
		return 0;
	struct input in = { data + 4, size - 4 };
	int reused;
	struct nfq_flows *t = nfq_flows_open(NULL, NULL, "fuzz", 1 + data[0] % 8, data[1] % 24, 8,
					     data[2] & 1 ? 16 + data[2] : 0, 1 + data[3] % 4, &reused);
	if (!t)
		return 0;
	t->keep_ended = data[3] >> 7;
	for (int c = 0; c < NFQ_FLOW_CLASSES; c++)
		t->timeouts[c] = 1 + c;
	double now = 0;
	int raw = 0;
	uint8_t *buf = malloc(200);
	struct nfq_packet p;
	while (in.left && buf) {
		unsigned op = take(&in) % 9;
		memset(&p, 0, sizeof p);
		if (op <= 4 || op == 7) {
			uint32_t len;
			if (op == 7) {
				/* Raw bytes may carry any data at a flow's sequence numbers. */
				raw = 1;
				len = take(&in) % 100;
				if (len > in.left)
					len = (uint32_t)in.left;
				memcpy(buf, in.p, len);
				in.p += len, in.left -= len;
			} else {
				len = build(buf, &in);
			}
			/* Exact size, so that a read past the packet shows. */
			uint8_t *pkt = malloc(len ? len : 1);
			if (!pkt)
				break;
			memcpy(pkt, buf, len);
			p.payload = pkt, p.payload_len = len;
			int i = nfq_flows_get(t, &p, now, op != 4);
			drain(t);
			if (i >= 0) {
				const struct nfq_flow *f = (const struct nfq_flow *)(t->slots + (size_t)i * t->stride);
				if (f->state != NFQ_FLOW_LIVE || (uint32_t)i >= t->capacity)
					abort();
				const uint8_t *bytes;
				uint32_t contiguous;
				int dir;
				if (nfq_flows_stream(t, (uint32_t)i, &p, &bytes, &contiguous, &dir) == 0 && bytes) {
					if (contiguous > t->stream_bytes)
						abort();
					for (uint32_t k = 0; k < contiguous && !raw; k++)
						if (bytes[k] != seq_byte(f->isn[dir] + k))
							abort();
				}
			}
			free(pkt);
		} else if (op == 5) {
			now += take(&in) / 16.0;
			unsigned b = take(&in);
			nfq_flows_expire(t, now, b & 1 ? t->capacity : 1 + b % 4);
			drain(t);
			/* With budget for all, none is left past its timeout. */
			for (uint32_t k = 0; (b & 1) && k < t->capacity; k++) {
				const struct nfq_flow *f = (const struct nfq_flow *)(t->slots + (size_t)k * t->stride);
				if (f->state == NFQ_FLOW_LIVE && now - f->last_seen > t->timeouts[f->tclass])
					abort();
			}
		} else {
			uint32_t slot = take(&in) % t->capacity;
			if (op == 6)
				nfq_flows_remove(t, slot);
			else if (((struct nfq_flow *)(t->slots + (size_t)slot * t->stride))->state == NFQ_FLOW_LIVE)
				nfq_flows_stream_done(t, slot);
			drain(t);
		}
		check(t);
	}
	(void)reused;
	free(buf);
	nfq_flows_release(t);
	return 0;
}

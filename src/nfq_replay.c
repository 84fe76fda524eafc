/*
 * nfq_replay.c: nfqlua --replay: a capture file instead of the kernel. Each
 * IPv4/IPv6 packet goes to the script through an offline queue, exactly as a
 * queued packet would; every verdict is printed, accepted packets can be
 * written to a new capture, and a summary ends the run. No root needed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <pcap/pcap.h>

#include "nfq_replay.h"

/* The kernel's verdict numbers (linux/netfilter.h clashes with pcap's headers). */
enum { NF_DROP, NF_ACCEPT, NF_STOLEN, NF_QUEUE, NF_REPEAT, NF_STOP };
#define NF_VERDICT_MASK 0xffff

/* A packet read from the capture, kept until its final verdict. */
struct replayed {
	struct nfq_packet meta;
	struct timeval ts;
	uint8_t *data;		/* the IP packet as captured */
	uint32_t len;
	unsigned repeats;
};

struct replay {
	struct nfq_engine *engine;
	struct replayed **by_id;	/* indexed by packet number */
	uint32_t n_ids;
	pcap_dumper_t *out;
	pcap_t *out_handle;
	unsigned long counts[8];	/* by NF_ verdict */
	unsigned long fallback, skipped, repeat_loops, read;
	unsigned long pending;		/* packets read that still wait for a verdict */
	/* The capture's clock, which the script's nfq.now() and on_timer follow. */
	double now;
	double timer_interval;		/* 0 without on_timer */
	double next_tick;		/* when on_timer runs next; 0 before the first packet */
};

static double seconds(const struct timeval *tv)
{
	return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

static const char *const verdict_names[] = {
	[NF_DROP] = "drop", [NF_ACCEPT] = "accept", [NF_STOLEN] = "stolen",
	[NF_QUEUE] = "queue", [NF_REPEAT] = "repeat", [NF_STOP] = "stop",
};

static int push(struct replay *r, struct replayed *pk, const uint8_t *data, uint32_t len)
{
	struct nfq_queue *q = nfq_engine_queue(r->engine);
	if (nfq_queue_offline_push(q, &pk->meta, data, len) == 0)
		return 0;
	nfq_engine_dispatch(r->engine);
	return nfq_queue_offline_push(q, &pk->meta, data, len);
}

static void print_verdict(const struct replay *r, const struct replayed *pk,
			  const struct nfq_verdict_record *rec, uint32_t v)
{
	char desc[64];
	nfq_describe(pk->data, pk->len, desc, sizeof desc);
	printf("#%u %ld.%06ld %s -> %s", pk->meta.id, (long)pk->ts.tv_sec, (long)pk->ts.tv_usec,
	       desc, v < sizeof verdict_names / sizeof *verdict_names && verdict_names[v] ? verdict_names[v] : "?");
	if (v == NF_QUEUE)
		printf(" %u", rec->verdict >> 16);
	if (rec->flags & NFQ_PF_MARK_SET)
		printf(" mark=0x%x", rec->mark);
	if (rec->flags & NFQ_PF_CONNMARK_SET)
		printf(" connmark=0x%x", rec->connmark);
	if (rec->payload)
		printf(" rewritten to %u bytes", rec->payload_len);
	if (rec->flags & NFQ_PF_FALLBACK)
		printf(" (fallback)");
	if (pk->repeats)
		printf(" (after %u repeats)", pk->repeats);
	double held = r->now - seconds(&pk->ts);
	if (held >= 0.0005)
		printf(" (held %.3f s)", held);
	putchar('\n');
}

static void write_packet(struct replay *r, const struct replayed *pk, const uint8_t *data, uint32_t len)
{
	if (!r->out)
		return;
	struct pcap_pkthdr h = { .ts = pk->ts, .caplen = len, .len = len };
	pcap_dump((u_char *)r->out, &h, data);
}

/* Print and act on the verdicts given since the last call. */
static void take_verdicts(struct replay *r)
{
	struct nfq_queue *q = nfq_engine_queue(r->engine);
	uint32_t n;
	const struct nfq_verdict_record *recs = nfq_queue_records(q, &n);
	/* A repeat pushes the packet again, which may add records: copy first. */
	struct nfq_verdict_record *copy = n ? malloc(n * sizeof *copy) : NULL;
	if (n && !copy)
		return;
	for (uint32_t i = 0; i < n; i++) {
		copy[i] = recs[i];
		if (recs[i].payload) {
			copy[i].payload = malloc(recs[i].payload_len + 1);
			if (copy[i].payload)
				memcpy(copy[i].payload, recs[i].payload, recs[i].payload_len);
		}
	}
	nfq_queue_clear_records(q);
	for (uint32_t i = 0; i < n; i++) {
		const struct nfq_verdict_record *rec = &copy[i];
		struct replayed *pk = rec->id < r->n_ids ? r->by_id[rec->id] : NULL;
		if (!pk)
			continue;
		uint32_t v = rec->verdict & NF_VERDICT_MASK;
		if (v == NF_REPEAT && pk->repeats < NFQ_OFFLINE_MAX_REPEATS) {
			/* Back through the script, with what the verdict changed. */
			pk->repeats++;
			if (rec->flags & NFQ_PF_MARK_SET)
				pk->meta.mark = rec->mark;
			if (rec->payload) {
				free(pk->data);
				pk->data = rec->payload;
				pk->len = rec->payload_len;
				copy[i].payload = NULL;
			}
			push(r, pk, pk->data, pk->len);
			continue;
		}
		if (v == NF_REPEAT) {
			r->repeat_loops++;
			printf("#%u repeated %u times: counted as a drop, as the kernel would loop\n",
			       pk->meta.id, pk->repeats);
			v = NF_DROP;
		}
		print_verdict(r, pk, rec, v);
		if (v < 8)
			r->counts[v]++;
		if (rec->flags & NFQ_PF_FALLBACK)
			r->fallback++;
		if (v == NF_ACCEPT || v == NF_STOP)
			write_packet(r, pk, rec->payload ? rec->payload : pk->data,
				     rec->payload ? rec->payload_len : pk->len);
		r->by_id[rec->id] = NULL;
		r->pending--;
		free(pk->data);
		free(pk);
	}
	for (uint32_t i = 0; i < n; i++)
		free(copy[i].payload);
	free(copy);
}

/* Dispatch what waits in the batch, repeats included, and act on the verdicts. */
static void dispatch_all(struct replay *r)
{
	struct nfq_queue *q = nfq_engine_queue(r->engine);
	while (q->count > q->pos) {
		nfq_engine_dispatch(r->engine);
		take_verdicts(r);
	}
}

static void set_time(struct replay *r, double t)
{
	r->now = t;
	nfq_engine_set_time(r->engine, t);
}

static void tick(struct replay *r)
{
	set_time(r, r->next_tick);
	nfq_engine_run_timer(r->engine);
	take_verdicts(r);
	dispatch_all(r);
	r->next_tick += r->timer_interval;
}

/*
 * Move the script's clock to t, running on_timer where the daemon would
 * have in between. The timer starts with the first packet; a capture that
 * goes back in time leaves the clock where it is.
 */
static void advance(struct replay *r, double t)
{
	if (t < r->now)
		t = r->now;
	if (r->timer_interval > 0) {
		if (r->next_tick == 0)
			r->next_tick = t + r->timer_interval;
		while (r->next_tick <= t)
			tick(r);
	}
	set_time(r, t);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int nfq_replay_run(const struct nfq_replay_opts *o)
{
	char errbuf[PCAP_ERRBUF_SIZE] = "";
	char err[1024];
	int rc = 1;
	struct replay r = { 0 };

	pcap_t *in = pcap_open_offline(o->capture, errbuf);
	if (!in) {
		fprintf(stderr, "nfqlua: cannot read capture '%s': %s\n", o->capture, errbuf);
		return 1;
	}
	int linktype = pcap_datalink(in);
	if (o->out) {
		r.out_handle = pcap_open_dead(DLT_RAW, 65535);
		r.out = r.out_handle ? pcap_dump_open(r.out_handle, o->out) : NULL;
		if (!r.out) {
			fprintf(stderr, "nfqlua: cannot write '%s': %s\n", o->out,
				r.out_handle ? pcap_geterr(r.out_handle) : "out of memory");
			goto done;
		}
	}
	struct nfq_engine_opts eo = o->engine;
	eo.offline = 1;
	r.engine = nfq_engine_new(NULL, &eo, err, sizeof err);
	if (!r.engine) {
		fprintf(stderr, "nfqlua: %s\n", err);
		goto done;
	}

	r.timer_interval = nfq_engine_timer_interval(r.engine);
	double start = now();
	struct pcap_pkthdr *h;
	const u_char *frame;
	int got;
	while ((got = pcap_next_ex(in, &h, &frame)) == 1) {
		r.read++;
		struct replayed *pk = calloc(1, sizeof *pk);
		uint32_t iplen;
		uint16_t proto;
		if (!pk)
			break;
		const uint8_t *ip = nfq_link_payload(linktype, frame, h->caplen, &iplen, &proto, &pk->meta);
		if (!ip) {
			r.skipped++;
			free(pk);
			continue;
		}
		pk->data = malloc(iplen);
		if (!pk->data) {
			free(pk);
			break;
		}
		memcpy(pk->data, ip, iplen);
		pk->len = iplen;
		pk->ts.tv_sec = h->ts.tv_sec;
		pk->ts.tv_usec = h->ts.tv_usec;
		pk->meta.id = (uint32_t)r.read;
		pk->meta.hw_protocol = proto;
		pk->meta.hook = (uint8_t)o->hook;
		pk->meta.mark = o->mark;
		pk->meta.ts_sec = h->ts.tv_sec;
		pk->meta.ts_usec = h->ts.tv_usec;
		pk->meta.flags |= NFQ_PF_TIMESTAMP;
		if (pk->meta.id >= r.n_ids) {
			uint32_t n = r.n_ids ? r.n_ids * 2 : 1024;
			while (n <= pk->meta.id)
				n *= 2;
			struct replayed **by_id = realloc(r.by_id, n * sizeof *by_id);
			if (!by_id) {
				free(pk->data);
				free(pk);
				break;
			}
			memset(by_id + r.n_ids, 0, (n - r.n_ids) * sizeof *by_id);
			r.by_id = by_id;
			r.n_ids = n;
		}
		r.by_id[pk->meta.id] = pk;
		r.pending++;
		/* Each packet reaches the script at its own time on the script's clock. */
		advance(&r, seconds(&pk->ts));
		push(&r, pk, pk->data, pk->len);
		dispatch_all(&r);
	}
	if (got == -1) {
		fprintf(stderr, "nfqlua: %s: packet %lu: %s\n", o->capture, r.read + 1, pcap_geterr(in));
		goto done;
	}
	/* The timer goes on while the script holds packets, for a while. */
	double drain_end = r.now + NFQ_OFFLINE_DRAIN_SECONDS;
	while (r.pending && r.timer_interval > 0 && r.next_tick <= drain_end)
		tick(&r);
	/* What the script still holds gets the fallback verdict, as at a stop. */
	nfq_engine_stop(r.engine);
	take_verdicts(&r);
	double secs = now() - start;
	unsigned long replayed = r.read - r.skipped;
	const char *link_name = pcap_datalink_val_to_name(linktype);
	printf("replayed %lu packets in %.3f s (%.0f packets/s): accept=%lu drop=%lu queue=%lu stop=%lu fallback=%lu repeat_loops=%lu skipped=%lu",
	       replayed, secs, secs > 0 ? (double)replayed / secs : 0.0,
	       r.counts[NF_ACCEPT], r.counts[NF_DROP], r.counts[NF_QUEUE], r.counts[NF_STOP],
	       r.fallback, r.repeat_loops, r.skipped);
	if (r.skipped)
		printf(" (no IPv4/IPv6 packet found; link type %d%s%s)", linktype,
		       link_name ? " " : "", link_name ? link_name : "");
	putchar('\n');
	rc = 0;
done:
	if (r.engine)
		nfq_engine_free(r.engine);
	for (uint32_t i = 0; i < r.n_ids; i++)
		if (r.by_id[i]) {
			free(r.by_id[i]->data);
			free(r.by_id[i]);
		}
	free(r.by_id);
	if (r.out)
		pcap_dump_close(r.out);
	if (r.out_handle)
		pcap_close(r.out_handle);
	pcap_close(in);
	return rc;
}

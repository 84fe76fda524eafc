/*
 * nfq_replay.c: nfqlua --replay: a capture file instead of the kernel. This
 * file reads the capture (libpcap), writes the accepted and the sent packets
 * to --out and prints the summary; the loop that gives each packet to the script, acts on
 * its verdicts and prints them is the offline driver in lua/nfq/offline.lua,
 * which nfqlua --replay shares with nfq.testing and which calls the functions
 * below through the FFI. No root needed.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <pcap/pcap.h>

#include "nfq_log.h"
#include "nfq_replay.h"

struct nfq_replay {
	const char *capture;
	pcap_t *in;
	int linktype;
	uint32_t hook, mark;		/* what every packet claims */
	unsigned long read, skipped;	/* frames read, frames without an IP packet */
	pcap_t *out_handle;
	pcap_dumper_t *out;		/* --out, or NULL */
	double started;			/* for the summary's packets/s */
	unsigned long script_errors;
	char errmsg[PCAP_ERRBUF_SIZE + 4096];
};

static const char log_tag[] = "replay";
/* Script errors logged in full; the rest are counted in one line at the end. */
#define SCRIPT_ERRORS_LOGGED 10

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int nfq_replay_next(struct nfq_replay *r, struct nfq_packet *meta, const uint8_t **data,
		    uint32_t *len)
{
	struct pcap_pkthdr *h;
	const u_char *frame;
	int got;
	while ((got = pcap_next_ex(r->in, &h, &frame)) == 1) {
		r->read++;
		uint16_t proto;
		memset(meta, 0, sizeof *meta);
		*data = nfq_link_payload(r->linktype, frame, h->caplen, len, &proto, meta);
		if (!*data) {
			r->skipped++;
			continue;
		}
		meta->id = (uint32_t)r->read;
		meta->hw_protocol = proto;
		meta->hook = (uint8_t)r->hook;
		meta->mark = r->mark;
		meta->ts_sec = h->ts.tv_sec;
		meta->ts_usec = h->ts.tv_usec;
		meta->flags |= NFQ_PF_TIMESTAMP;
		return 1;
	}
	if (got == PCAP_ERROR_BREAK)
		return 0;
	snprintf(r->errmsg, sizeof r->errmsg, "%s: packet %lu: %s", r->capture, r->read + 1,
		 pcap_geterr(r->in));
	return -1;
}

const char *nfq_replay_error(const struct nfq_replay *r)
{
	return r->errmsg;
}

void nfq_replay_write(struct nfq_replay *r, const uint8_t *data, uint32_t len, int64_t sec,
		      int64_t usec)
{
	if (!r->out)
		return;
	struct pcap_pkthdr h = { .ts = { .tv_sec = sec, .tv_usec = usec }, .caplen = len, .len = len };
	pcap_dump((u_char *)r->out, &h, data);
}

void nfq_replay_script_error(struct nfq_replay *r, const char *what, const char *msg)
{
	if (++r->script_errors > SCRIPT_ERRORS_LOGGED)
		return;
	/* The first line as the error, the traceback for debugging. */
	const char *nl = strchr(msg, '\n');
	nfq_log(NFQ_LOG_ERROR, "%s: %s: %.*s", log_tag, what, nl ? (int)(nl - msg) : (int)strlen(msg), msg);
	if (nl)
		nfq_log(NFQ_LOG_DEBUG, "%s", nl + 1);
}

void nfq_replay_note(struct nfq_replay *r, const char *msg)
{
	(void)r;
	nfq_log(NFQ_LOG_WARN, "%s: %s", log_tag, msg);
}

void nfq_replay_summary(struct nfq_replay *r, uint64_t accept, uint64_t drop, uint64_t queue,
			uint64_t stop, uint64_t fallback, uint64_t repeat_loops, uint64_t sent)
{
	double secs = now() - r->started;
	unsigned long replayed = r->read - r->skipped;
	printf("replayed %lu packets in %.3f s (%.0f packets/s): accept=%llu drop=%llu queue=%llu stop=%llu fallback=%llu repeat_loops=%llu sent=%llu skipped=%lu",
	       replayed, secs, secs > 0 ? (double)replayed / secs : 0.0,
	       (unsigned long long)accept, (unsigned long long)drop, (unsigned long long)queue,
	       (unsigned long long)stop, (unsigned long long)fallback,
	       (unsigned long long)repeat_loops, (unsigned long long)sent, r->skipped);
	if (r->skipped) {
		const char *link_name = pcap_datalink_val_to_name(r->linktype);
		printf(" (no IPv4/IPv6 packet found; link type %d%s%s)", r->linktype,
		       link_name ? " " : "", link_name ? link_name : "");
	}
	putchar('\n');
}

int nfq_replay_run(const struct nfq_replay_opts *o)
{
	char errbuf[PCAP_ERRBUF_SIZE] = "";
	char err[1024];
	int rc = 1;
	struct nfq_engine *engine = NULL;
	struct nfq_replay r = { .capture = o->capture, .hook = o->hook, .mark = o->mark };

	r.in = pcap_open_offline(o->capture, errbuf);
	if (!r.in) {
		fprintf(stderr, "nfqlua: cannot read capture '%s': %s\n", o->capture, errbuf);
		nfq_sender_close(o->engine.sender);
		return 1;
	}
	r.linktype = pcap_datalink(r.in);
	if (o->out) {
		r.out_handle = pcap_open_dead(DLT_RAW, 65535);
		r.out = r.out_handle ? pcap_dump_open(r.out_handle, o->out) : NULL;
		if (!r.out) {
			fprintf(stderr, "nfqlua: cannot write '%s': %s\n", o->out,
				r.out_handle ? pcap_geterr(r.out_handle) : "out of memory");
			nfq_sender_close(o->engine.sender);
			goto done;
		}
	}
	struct nfq_engine_opts eo = o->engine;
	eo.offline = 1;
	engine = nfq_engine_new(NULL, &eo, err, sizeof err);
	if (!engine) {
		fprintf(stderr, "nfqlua: %s\n", err);
		goto done;
	}
	r.started = now();
	if (nfq_engine_run_offline(engine, &r, err, sizeof err) < 0) {
		fprintf(stderr, "nfqlua: %s\n", err);
		goto done;
	}
	rc = 0;
done:
	nfq_engine_free(engine);
	if (r.script_errors > SCRIPT_ERRORS_LOGGED)
		nfq_log(NFQ_LOG_WARN, "%s: %lu more script errors not logged (only the first %d are)", log_tag,
			r.script_errors - SCRIPT_ERRORS_LOGGED, SCRIPT_ERRORS_LOGGED);
	if (r.out)
		pcap_dump_close(r.out);
	if (r.out_handle)
		pcap_close(r.out_handle);
	pcap_close(r.in);
	return rc;
}

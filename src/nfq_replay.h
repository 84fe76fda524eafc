/* nfq_replay.h: run a filter script over a capture file (nfqlua --replay). */
#ifndef NFQ_REPLAY_H
#define NFQ_REPLAY_H

#include "nfq_engine.h"

struct nfq_replay_opts {
	struct nfq_engine_opts engine;	/* script, mode, range, fallback, flags */
	const char *capture;		/* pcap or pcapng file to read */
	const char *out;		/* capture of the accepted packets, or NULL */
	uint32_t hook;			/* the hook packets claim to come from */
	uint32_t mark;			/* the mark they arrive with */
};

/* The process exit status: 0, or 1 with the reason on stderr. */
int nfq_replay_run(const struct nfq_replay_opts *o);

#endif

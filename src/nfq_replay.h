/* nfq_replay.h: run a filter script over a capture file (nfqlua --replay). */
#ifndef NFQ_REPLAY_H
#define NFQ_REPLAY_H

#include "nfq_engine.h"

struct nfq_replay_opts {
	struct nfq_engine_opts engine;	/* script, mode, range, fallback, flags, sender (owned) */
	const char *capture;		/* pcap or pcapng file to read */
	const char *out;		/* capture of the accepted packets, or NULL */
	uint32_t hook;			/* the hook packets claim to come from */
	uint32_t mark;			/* the mark they arrive with */
};

/* The process exit status: 0, or 1 with the reason on stderr. */
int nfq_replay_run(const struct nfq_replay_opts *o);

/*
 * The engine runs the offline driver (lua/nfq/offline.lua) in its script's
 * state over source, the capture reader below; implemented in nfq_engine.c.
 */
int nfq_engine_run_offline(struct nfq_engine *e, void *source,
					char *err, size_t errlen);

/*
 * The capture reader, as the driver calls it through the FFI (the cdef in
 * lua/nfq/offline.lua): these stay exported from the binary.
 */
#define NFQ_REPLAY_FFI __attribute__((visibility("default")))
struct nfq_replay;

/*
 * The next IPv4/IPv6 packet of the capture: its metadata in meta (id = its
 * frame number, hardware address, hook, mark, capture time), *data and *len
 * its bytes from the IP header on, valid until the next call. 1, 0 at the
 * end, -1 on a bad capture (nfq_replay_error says where).
 */
NFQ_REPLAY_FFI int nfq_replay_next(struct nfq_replay *r, struct nfq_packet *meta,
				   const uint8_t **data, uint32_t *len);
NFQ_REPLAY_FFI const char *nfq_replay_error(const struct nfq_replay *r);
/* Add a packet to the --out capture, if there is one. */
NFQ_REPLAY_FFI void nfq_replay_write(struct nfq_replay *r, const uint8_t *data,
				     uint32_t len, int64_t sec, int64_t usec);
/* Log a failed call into the script: the first few, then only count them. */
NFQ_REPLAY_FFI void nfq_replay_script_error(struct nfq_replay *r, const char *what,
					    const char *msg);
/* Log a warning about the run. */
NFQ_REPLAY_FFI void nfq_replay_note(struct nfq_replay *r, const char *msg);
/* Print the summary line, with the final verdicts and the sent packets the driver counted. */
NFQ_REPLAY_FFI void nfq_replay_summary(struct nfq_replay *r, uint64_t accept, uint64_t drop,
				       uint64_t queue, uint64_t stop, uint64_t fallback,
				       uint64_t repeat_loops, uint64_t sent);

#endif

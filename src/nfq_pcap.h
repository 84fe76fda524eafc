/*
 * nfq_pcap.h: recording packets to pcap files (nfq.pcap) without blocking
 * the queue. The CDEF block below is part of lua/nfq/cdef.lua.
 */
#ifndef NFQ_PCAP_H
#define NFQ_PCAP_H

#include <stddef.h>
#include <stdint.h>

#include "nfq_core.h"

#pragma GCC visibility push(default)
/* BEGIN CDEF */
/*
 * A recorder: one pcap file (nanosecond timestamps, LINKTYPE_RAW: each
 * record is an IPv4 or IPv6 packet) fed from two buffers. Packets are copied
 * into one buffer while a thread of the recorder's own writes the other to
 * disk, so no write(2) ever runs on the caller's path.
 */
struct nfq_pcap;

enum {
	NFQ_PCAP_MIN_BUFFER = 131072,	/* a buffer holds the largest record (16 + 65535) */
	NFQ_PCAP_MAX_SNAPLEN = 65535
};

struct nfq_pcap_opts {
	uint64_t max_bytes;		/* a file rotates before it grows past this; 0: never */
	uint32_t keep;			/* rotated files kept: path.1 (newest) .. path.keep */
	uint32_t snaplen;		/* bytes of each packet recorded, 1..NFQ_PCAP_MAX_SNAPLEN */
	uint32_t buffer_bytes;		/* each of the two buffers, at least NFQ_PCAP_MIN_BUFFER */
	uint32_t flush_ms;		/* what is buffered reaches the disk at most this much later */
};

struct nfq_pcap_stats {
	uint64_t written;		/* packets written to disk */
	uint64_t dropped;		/* packets lost: both buffers full, or a failed write */
	uint64_t bytes;			/* bytes written to disk, file headers included */
	uint64_t rotated;		/* files rotated */
	uint64_t write_errors;		/* failed writes, opens or renames */
	uint64_t buffered;		/* packets taken, not yet written or lost */
	int32_t last_errno;		/* of the last failure; 0 once a write succeeds again */
	int32_t reserved;
};

/*
 * The recorder of path: a new one (the file created; an existing one that
 * holds packets is rotated away first when o->keep > 0), or the one this
 * process already has open at that same path, shared (another worker's, the
 * previous script version's), which takes max_bytes, keep, snaplen and
 * flush_ms from o. NULL with why in err. Each open needs its
 * nfq_pcap_release().
 */
struct nfq_pcap *nfq_pcap_open(const char *path, const struct nfq_pcap_opts *o, char *err, size_t errlen);
/*
 * Take one packet of len bytes (orig_len before any truncation), stamped
 * sec.nsec (wall clock; sec < 0: now): 1, or 0 when both buffers are full
 * and it was dropped. Never blocks on the disk.
 */
int nfq_pcap_write(struct nfq_pcap *w, const uint8_t *data, uint32_t len, uint32_t orig_len, int64_t sec,
		   int64_t nsec);
/* The same for a queued packet: its payload as it stands, its kernel time
 * stamp when it has one; -1 when it has no payload (COPY_META). */
int nfq_pcap_write_packet(struct nfq_pcap *w, const struct nfq_packet *p);
/* Hand what is buffered to the writer thread now; returns at once. */
void nfq_pcap_flush(struct nfq_pcap *w);
/*
 * Wait until every packet taken so far is written or counted lost: 0, or -1
 * (errno ETIMEDOUT) after timeout_ms.
 */
int nfq_pcap_sync(struct nfq_pcap *w, uint32_t timeout_ms);
void nfq_pcap_get_stats(struct nfq_pcap *w, struct nfq_pcap_stats *out);
/*
 * Give up one open: what is buffered goes to the writer thread. The last
 * release closes the recorder: its thread writes what is left, closes the
 * file and ends; the process waits for it at exit.
 */
void nfq_pcap_release(struct nfq_pcap *w);
/* END CDEF */
#pragma GCC visibility pop

#endif

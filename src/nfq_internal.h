/*
 * nfq_internal.h: what the C files of the core share with each other and
 * with nobody else (hidden from the shared library's symbol table).
 */
#ifndef NFQ_INTERNAL_H
#define NFQ_INTERNAL_H

#include "nfq_core.h"

#define NFQ_INTERNAL __attribute__((visibility("hidden")))

/* Largest payload a verdict can carry: NFQA_PAYLOAD's length is 16 bits. */
#define NFQ_MAX_PAYLOAD (65535 - 4)

/* Append the verdict message for p to the queue's send buffer. */
NFQ_INTERNAL int nfq_queue_put_verdict(struct nfq_queue *q,
				       const struct nfq_packet *p,
				       uint32_t verdict);
NFQ_INTERNAL void nfq_queue_link_retained(struct nfq_queue *q,
					  struct nfq_packet *p);
NFQ_INTERNAL void nfq_queue_unlink_retained(struct nfq_queue *q,
					    struct nfq_packet *p);
/* Verdict p with its queue's fallback verdict, counting it as a fallback. */
NFQ_INTERNAL void nfq_packet_fallback(struct nfq_packet *p);

#endif

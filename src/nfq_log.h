/* nfq_log.h: the daemon's log: one line per event, on stderr or to syslog. */
#ifndef NFQ_LOG_H
#define NFQ_LOG_H

enum { NFQ_LOG_ERROR, NFQ_LOG_WARN, NFQ_LOG_INFO, NFQ_LOG_DEBUG };

extern int nfq_log_level;

/* Send the lines that follow to syslog (facility daemon) instead of stderr. */
void nfq_log_to_syslog(void);

void nfq_log(int level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * A budget for lines that can repeat per packet: at most NFQ_LOG_BURST of
 * them per NFQ_LOG_WINDOW_MS, so that a script failing on every packet
 * cannot flood the log. The lines held back are counted and reported once
 * the window is over. Zero-initialise; one per thread.
 */
#define NFQ_LOG_BURST 10
#define NFQ_LOG_WINDOW_MS 5000

struct nfq_log_limit {
	long long window_start_ms;
	unsigned logged;
	unsigned long long suppressed;
};

/* 1 if a repeating line may be logged now, 0 if it is to be held back. */
int nfq_log_allow(struct nfq_log_limit *limit, const char *tag);

/* Report the lines held back so far, if any. */
void nfq_log_flush(struct nfq_log_limit *limit, const char *tag);

#endif

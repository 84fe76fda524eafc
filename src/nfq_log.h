/* nfq_log.h: the daemon's log: one line per event on stderr. */
#ifndef NFQ_LOG_H
#define NFQ_LOG_H

enum { NFQ_LOG_ERROR, NFQ_LOG_WARN, NFQ_LOG_INFO, NFQ_LOG_DEBUG };

extern int nfq_log_level;

void nfq_log(int level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif

/* nfq_log.h: the daemon's log: one line per event, on stderr or to syslog. */
#ifndef NFQ_LOG_H
#define NFQ_LOG_H

#include "nfq_engine.h"	/* the levels, NFQ_LOG_* */

/* Lines above this level are not written. */
extern int nfq_log_level;

/* Send the lines that follow to syslog (facility daemon) instead of stderr. */
void nfq_log_to_syslog(void);

void nfq_log(int level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif

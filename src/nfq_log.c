/* nfq_log.c: leveled log lines on stderr or to syslog, and their rate limit. */
#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>

#include "nfq_internal.h"
#include "nfq_log.h"

int nfq_log_level = NFQ_LOG_INFO;

static int use_syslog;

static const char *const level_names[] = { "error", "warning", "info", "debug" };
static const int syslog_priorities[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };

void nfq_log_to_syslog(void)
{
	openlog("nfqlua", LOG_PID | LOG_NDELAY, LOG_DAEMON);
	use_syslog = 1;
}

void nfq_log(int level, const char *fmt, ...)
{
	if (level > nfq_log_level)
		return;
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (use_syslog)
		syslog(syslog_priorities[level], "%s: %s", level_names[level], line);
	else
		fprintf(stderr, "nfqlua: %s: %s\n", level_names[level], line);
}

void nfq_log_flush(struct nfq_log_limit *limit, const char *tag)
{
	if (limit->suppressed)
		nfq_log(NFQ_LOG_WARN, "%s: %llu more lines like the above suppressed (at most %d per %d s; the counters have them all)",
			tag, limit->suppressed, NFQ_LOG_BURST, NFQ_LOG_WINDOW_MS / 1000);
	limit->suppressed = 0;
}

int nfq_log_allow(struct nfq_log_limit *limit, const char *tag)
{
	long long now = nfq_now_ms();
	if (now - limit->window_start_ms >= NFQ_LOG_WINDOW_MS) {
		nfq_log_flush(limit, tag);
		limit->window_start_ms = now;
		limit->logged = 0;
	}
	if (limit->logged < NFQ_LOG_BURST) {
		limit->logged++;
		return 1;
	}
	limit->suppressed++;
	return 0;
}

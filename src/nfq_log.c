/* nfq_log.c: the daemon's leveled log lines, on stderr or to syslog. */
#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>

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

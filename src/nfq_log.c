/* nfq_log.c: leveled log lines on stderr. */
#include <stdarg.h>
#include <stdio.h>

#include "nfq_log.h"

int nfq_log_level = NFQ_LOG_INFO;

static const char *const level_names[] = { "error", "warning", "info", "debug" };

void nfq_log(int level, const char *fmt, ...)
{
	if (level > nfq_log_level)
		return;
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	fprintf(stderr, "nfqlua: %s: %s\n", level_names[level], line);
}

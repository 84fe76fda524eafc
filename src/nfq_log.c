/* nfq_log.c: the daemon's leveled log lines, on stderr or to syslog. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include "nfq_log.h"

int nfq_log_level = NFQ_LOG_INFO;

static int use_syslog;

static const char *const level_names[] = { "error", "warning", "info", "debug" };
static const int syslog_priorities[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };

/*
 * 0 if something accepts datagrams or connections at the syslog socket,
 * else the errno of the last try. syslog(3) loses lines silently when
 * nothing does, so the operator is told once, at start.
 */
static int syslog_socket_error(void)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	const int types[] = { SOCK_DGRAM, SOCK_STREAM };	/* as syslog(3) tries them */
	int err = 0;
	strncpy(addr.sun_path, _PATH_LOG, sizeof addr.sun_path - 1);
	for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
		int fd = socket(AF_UNIX, types[i] | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return errno;
		int rc = connect(fd, (struct sockaddr *)&addr, sizeof addr);
		err = rc == 0 ? 0 : errno;
		close(fd);
		if (err != EPROTOTYPE)
			break;
	}
	return err;
}

void nfq_log_to_syslog(void)
{
	int err = syslog_socket_error();
	if (err && nfq_log_level >= NFQ_LOG_WARN)
		fprintf(stderr, "nfqlua: warning: --syslog: no syslog daemon takes lines at %s (%s), so they are lost "
			"until one does; start one (rsyslog, systemd-journald) or leave out --syslog\n",
			_PATH_LOG, strerror(err));
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

/* sink: drain a UDP port on 127.0.0.1 and count datagrams, so that the
 * benchmark sees what was delivered after the verdict.
 *
 *   sink [-p PORT] [-b BATCH] [-c CPU] [-R RCVBUF]
 *
 * Prints "ready" once bound; on SIGUSR1 "count=N bytes=B t=MONOTONIC_SECONDS";
 * on SIGINT/SIGTERM the same line, then exits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 1024
#define BUF_SIZE 2048 /* longer datagrams are truncated: only the count matters */

static volatile sig_atomic_t report, stop;
static void on_usr1(int sig) { (void)sig; report = 1; }
static void on_stop(int sig) { (void)sig; stop = 1; }

static void print_count(unsigned long long count, unsigned long long bytes)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	printf("count=%llu bytes=%llu t=%.6f\n", count, bytes, ts.tv_sec + ts.tv_nsec / 1e9);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	int port = 9999, batch = 256, cpu = -1, rcvbuf = 64 << 20, opt;
	while ((opt = getopt(argc, argv, "p:b:c:R:")) != -1) {
		switch (opt) {
		case 'p': port = atoi(optarg); break;
		case 'b': batch = atoi(optarg); break;
		case 'c': cpu = atoi(optarg); break;
		case 'R': rcvbuf = atoi(optarg); break;
		default:
			fprintf(stderr, "usage: sink [-p PORT] [-b BATCH] [-c CPU] [-R RCVBUF]\n");
			return 2;
		}
	}
	if (batch < 1 || batch > MAX_BATCH) batch = 256;
	if (cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set) < 0)
			perror("sink: sched_setaffinity");
	}

	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) { perror("sink: socket"); return 1; }
	/* A full receive buffer would count as loss that is not the consumer's. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) < 0 &&
	    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) < 0)
		perror("sink: SO_RCVBUF");
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
		perror("sink: bind");
		return 1;
	}

	static char bufs[MAX_BATCH][BUF_SIZE];
	static struct iovec iov[MAX_BATCH];
	static struct mmsghdr msgs[MAX_BATCH];
	for (int i = 0; i < batch; i++) {
		iov[i].iov_base = bufs[i];
		iov[i].iov_len = BUF_SIZE;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	/* No SA_RESTART: a signal must interrupt the blocking recvmmsg. */
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_stop;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	printf("ready\n");
	fflush(stdout);
	unsigned long long count = 0, bytes = 0;
	while (!stop) {
		int n = recvmmsg(fd, msgs, batch, MSG_WAITFORONE, NULL);
		if (n > 0) {
			count += n;
			for (int i = 0; i < n; i++)
				bytes += msgs[i].msg_len;
		} else if (n < 0 && errno != EINTR) {
			perror("sink: recvmmsg");
			return 1;
		}
		if (report) {
			report = 0;
			print_count(count, bytes);
		}
	}
	print_count(count, bytes);
	return 0;
}

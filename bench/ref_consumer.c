/* ref_consumer: the C reference for the benchmark. It accepts every packet of
 * one NFQUEUE as fast as a hand-written libmnl consumer can:
 *
 *  - one config message binds the queue and sets copy mode, range, queue
 *    length and NFQA_CFG_F_GSO together (no window in COPY_NONE);
 *  - a large receive buffer (SO_RCVBUFFORCE) and NETLINK_NO_ENOBUFS, so an
 *    overrun costs packets, never an error path;
 *  - recvmmsg takes up to BATCH messages per wakeup;
 *  - one NFQNL_MSG_VERDICT_BATCH per batch accepts every id up to the highest.
 *
 *   ref_consumer [-q QUEUE] [-r RANGE] [-m MAXLEN] [-b BATCH] [-R RCVBUF]
 *                [-c CPU] [-M] [-G]
 *
 * -M copies metadata only, -G leaves NFQA_CFG_F_GSO off. Runs until SIGINT or
 * SIGTERM, then prints "verdicts=N batches=B user_s=U sys_s=S cpu_s=C".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#define MAX_BATCH 1024
#define NL_OVERHEAD 1024 /* netlink, nfgenmsg and metadata attributes around the payload */

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static void usage(void)
{
	fprintf(stderr, "usage: ref_consumer [-q QUEUE] [-r RANGE] [-m MAXLEN] [-b BATCH] [-R RCVBUF]\n"
			"                    [-c CPU] [-M] [-G] [-k MARK]\n");
	exit(2);
}

/* The packet id of one NFQNL_MSG_PACKET, or 0 for anything else. The kernel
 * puts NFQA_PACKET_HDR first, so the walk normally stops at once. */
static uint32_t packet_id(const struct nlmsghdr *nlh)
{
	const struct nlattr *attr;
	if (nlh->nlmsg_type != ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET))
		return 0;
	mnl_attr_for_each(attr, nlh, sizeof(struct nfgenmsg)) {
		if (mnl_attr_get_type(attr) == NFQA_PACKET_HDR &&
		    mnl_attr_get_payload_len(attr) >= sizeof(struct nfqnl_msg_packet_hdr)) {
			const struct nfqnl_msg_packet_hdr *ph = mnl_attr_get_payload(attr);
			return ntohl(ph->packet_id);
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	int queue = 0, range = 0xffff, maxlen = 1024, batch = 128, cpu = -1, opt;
	int rcvbuf = 64 << 20, mode = NFQNL_COPY_PACKET;
	uint32_t flags = NFQA_CFG_F_GSO;
	long long mark = -1;	/* -k: mark every packet, as the benchmark's filter does */

	while ((opt = getopt(argc, argv, "q:r:m:b:R:c:MGk:h")) != -1) {
		switch (opt) {
		case 'q': queue = atoi(optarg); break;
		case 'r': range = atoi(optarg); break;
		case 'm': maxlen = atoi(optarg); break;
		case 'b': batch = atoi(optarg); break;
		case 'R': rcvbuf = atoi(optarg); break;
		case 'c': cpu = atoi(optarg); break;
		case 'M': mode = NFQNL_COPY_META; break;
		case 'G': flags = 0; break;
		case 'k': mark = strtoll(optarg, NULL, 0); break;
		default: usage();
		}
	}
	if (queue < 0 || queue > 65535 || range < 1 || range > 0xffff || maxlen < 1 ||
	    batch < 1 || batch > MAX_BATCH)
		usage();

	if (cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set) < 0)
			perror("ref_consumer: sched_setaffinity");
	}

	struct mnl_socket *nl = mnl_socket_open(NETLINK_NETFILTER);
	if (!nl) { perror("ref_consumer: mnl_socket_open"); return 1; }
	if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
		perror("ref_consumer: mnl_socket_bind");
		return 1;
	}
	int fd = mnl_socket_get_fd(nl);
	unsigned int portid = mnl_socket_get_portid(nl);
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) < 0)
		perror("ref_consumer: SO_RCVBUFFORCE");
	if (mnl_socket_setsockopt(nl, NETLINK_NO_ENOBUFS, &one, sizeof(one)) < 0)
		perror("ref_consumer: NETLINK_NO_ENOBUFS");

	/* Bind, copy mode, range, length and flags in one acknowledged message. */
	static char cbuf[8192];
	struct nlmsghdr *nlh = nfq_nlmsg_put(cbuf, NFQNL_MSG_CONFIG, queue);
	nlh->nlmsg_flags |= NLM_F_ACK;
	nlh->nlmsg_seq = 1;
	nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_BIND);
	nfq_nlmsg_cfg_put_params(nlh, mode, range);
	nfq_nlmsg_cfg_put_qmaxlen(nlh, maxlen);
	mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(flags));
	mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(NFQA_CFG_F_GSO));
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
		perror("ref_consumer: config");
		return 1;
	}
	ssize_t got = mnl_socket_recvfrom(nl, cbuf, sizeof(cbuf));
	if (got < 0 || mnl_cb_run(cbuf, got, 1, portid, NULL, NULL) < 0) {
		fprintf(stderr, "ref_consumer: binding queue %d: %s\n", queue, strerror(errno));
		return 1;
	}

	/* One buffer per message, big enough for a whole (GSO) packet. */
	size_t bufsize = (size_t)(mode == NFQNL_COPY_PACKET ? range : 0) + NL_OVERHEAD;
	char *bufs = malloc(bufsize * batch);
	static struct iovec iov[MAX_BATCH];
	static struct mmsghdr msgs[MAX_BATCH];
	if (!bufs) return 1;
	for (int i = 0; i < batch; i++) {
		iov[i].iov_base = bufs + bufsize * i;
		iov[i].iov_len = bufsize;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}

	/* No SA_RESTART: the signal must interrupt the blocking recvmmsg. */
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	static char vbuf[256];
	unsigned long long verdicts = 0, batches = 0;
	while (!stop) {
		int n = recvmmsg(fd, msgs, batch, MSG_WAITFORONE, NULL);
		if (n < 0) {
			if (errno == EINTR || errno == ENOBUFS)
				continue;
			perror("ref_consumer: recvmmsg");
			return 1;
		}
		uint32_t max_id = 0;
		unsigned int count = 0;
		for (int i = 0; i < n; i++) {
			const struct nlmsghdr *m = iov[i].iov_base;
			int len = msgs[i].msg_len;
			for (; mnl_nlmsg_ok(m, len); m = mnl_nlmsg_next(m, &len)) {
				uint32_t id = packet_id(m);
				if (id) {
					count++;
					if (id > max_id) max_id = id;
				} else if (m->nlmsg_type == NLMSG_ERROR) {
					const struct nlmsgerr *e = mnl_nlmsg_get_payload(m);
					if (e->error)
						fprintf(stderr, "ref_consumer: netlink error: %s\n", strerror(-e->error));
				}
			}
		}
		if (!count)
			continue;
		nlh = nfq_nlmsg_put(vbuf, NFQNL_MSG_VERDICT_BATCH, queue);
		nfq_nlmsg_verdict_put(nlh, max_id, NF_ACCEPT);
		if (mark >= 0)
			nfq_nlmsg_verdict_put_mark(nlh, (uint32_t)mark);
		if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
			perror("ref_consumer: verdict");
			return 1;
		}
		verdicts += count;
		batches++;
	}

	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double user = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
	double sys = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
	printf("verdicts=%llu batches=%llu user_s=%.3f sys_s=%.3f cpu_s=%.3f\n",
	       verdicts, batches, user, sys, user + sys);
	mnl_socket_close(nl);
	return 0;
}

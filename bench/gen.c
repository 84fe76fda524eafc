/* gen: UDP load generator for the NFQUEUE benchmark (loopback only).
 *
 *   gen [-d 127.0.0.1] [-p PORT] [-s SIZE] [-t SECONDS | -n DATAGRAMS]
 *       [-b BATCH] [-g] [-c CPU] [-S SNDBUF] [-F FLOWS] [-D] [-T]
 *
 * Sends SIZE-byte UDP payloads with sendmmsg, BATCH messages per call. With
 * -g each message is one UDP GSO super-packet of 32 segments of SIZE bytes
 * (UDP_SEGMENT), so the counts below are always datagrams on the wire. With
 * -F the datagrams take turns over FLOWS source addresses (127.1.0.0 on,
 * set per message with IP_PKTINFO), so a stateful filter sees that many
 * concurrent flows. With -D the payloads are DNS queries (A, one question)
 * for random names under common TLDs, 4096 of them taken in turn, instead
 * of SIZE bytes: what a DNS filter sees. With -T it sends TCP segments
 * instead (flags PA, SIZE bytes of payload, from port 40000, checksums
 * complete), built once and sent through a raw socket with the IP header
 * included: what a Geneva strategy with a [TCP:flags:PA] trigger matches.
 * No connection: the receiver must drop them (bench/run.sh does, in INPUT).
 * Prints "sent=N sends=M errors=E seconds=S" on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

#define GSO_SEGMENTS 32
#define MAX_BATCH 1024

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

#define DNS_QUERIES 4096 /* a power of two */
#define DNS_QUERY_MAX 64

/* A DNS query for a random name such as "k3x9q.example7.net" into out; its length. */
static size_t dns_query(unsigned char *out, unsigned *seed)
{
	static const char *const tlds[] = { "com", "com", "net", "org", "io", "de", "info", "xyz" };
	static const char letters[] = "abcdefghijklmnopqrstuvwxyz0123456789";
	size_t n = 0;
	*seed = *seed * 1103515245u + 12345u;
	unsigned char header[12] = { *seed >> 24, *seed >> 16, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0 };
	memcpy(out, header, sizeof header);
	n = sizeof header;
	int labels = 1 + (*seed >> 8) % 2;
	for (int l = 0; l < labels; l++) {
		*seed = *seed * 1103515245u + 12345u;
		int len = 3 + (*seed >> 16) % 12;
		out[n++] = (unsigned char)len;
		for (int i = 0; i < len; i++) {
			*seed = *seed * 1103515245u + 12345u;
			out[n++] = (unsigned char)letters[(*seed >> 16) % (sizeof letters - 1)];
		}
	}
	const char *tld = tlds[(*seed >> 4) % (sizeof tlds / sizeof *tlds)];
	out[n++] = (unsigned char)strlen(tld);
	memcpy(out + n, tld, strlen(tld));
	n += strlen(tld);
	static const unsigned char tail[5] = { 0, 0, 1, 0, 1 }; /* root, type A, class IN */
	memcpy(out + n, tail, sizeof tail);
	return n + sizeof tail;
}

#define TCP_SPORT 40000

static uint32_t sum_words(const uint8_t *p, size_t n, uint32_t sum)
{
	for (size_t i = 0; i + 1 < n; i += 2)
		sum += (uint32_t)(p[i] << 8 | p[i + 1]);
	if (n & 1)
		sum += (uint32_t)p[n - 1] << 8;
	return sum;
}

static uint16_t fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/* An IPv4/TCP segment (PA) from dst:TCP_SPORT to dst:port with size bytes of
 * payload into out (40 + size bytes), both checksums set. */
static size_t tcp_segment(uint8_t *out, struct in_addr dst, int port, int size)
{
	size_t len = sizeof(struct iphdr) + sizeof(struct tcphdr) + (size_t)size;
	struct iphdr *ip = (struct iphdr *)out;
	struct tcphdr *tcp = (struct tcphdr *)(out + sizeof *ip);
	memset(out, 0, sizeof *ip + sizeof *tcp);
	memset(out + sizeof *ip + sizeof *tcp, 'x', (size_t)size);
	ip->version = 4;
	ip->ihl = 5;
	ip->tot_len = htons((uint16_t)len);
	ip->id = htons(1);
	ip->ttl = 64;
	ip->protocol = IPPROTO_TCP;
	ip->saddr = dst.s_addr;
	ip->daddr = dst.s_addr;
	ip->check = htons(fold(sum_words(out, sizeof *ip, 0)));
	tcp->source = htons(TCP_SPORT);
	tcp->dest = htons((uint16_t)port);
	tcp->seq = htonl(1);
	tcp->ack_seq = htonl(1);
	tcp->doff = 5;
	tcp->psh = 1;
	tcp->ack = 1;
	tcp->window = htons(65535);
	uint8_t pseudo[12];
	memcpy(pseudo, &ip->saddr, 4);
	memcpy(pseudo + 4, &ip->daddr, 4);
	pseudo[8] = 0;
	pseudo[9] = IPPROTO_TCP;
	pseudo[10] = (uint8_t)((len - sizeof *ip) >> 8);
	pseudo[11] = (uint8_t)(len - sizeof *ip);
	tcp->check = htons(fold(sum_words((uint8_t *)tcp, len - sizeof *ip, sum_words(pseudo, sizeof pseudo, 0))));
	return len;
}

static void usage(void)
{
	fprintf(stderr, "usage: gen [-d 127.0.0.1] [-p PORT] [-s SIZE] [-t SECONDS | -n DATAGRAMS]\n"
			"           [-b BATCH] [-g] [-c CPU] [-S SNDBUF] [-F FLOWS] [-D] [-T]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *dst = "127.0.0.1";
	int port = 9999, size = 64, batch = 64, gso = 0, cpu = -1, flows = 0, dns = 0, tcp = 0, opt;
	double seconds = 0;
	unsigned long long limit = 0;
	int sndbuf = 64 << 20;

	while ((opt = getopt(argc, argv, "d:p:s:t:n:b:gc:S:F:DTh")) != -1) {
		switch (opt) {
		case 'd': dst = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 's': size = atoi(optarg); break;
		case 't': seconds = atof(optarg); break;
		case 'n': limit = strtoull(optarg, NULL, 10); break;
		case 'b': batch = atoi(optarg); break;
		case 'g': gso = 1; break;
		case 'c': cpu = atoi(optarg); break;
		case 'S': sndbuf = atoi(optarg); break;
		case 'F': flows = atoi(optarg); break;
		case 'D': dns = 1; break;
		case 'T': tcp = 1; break;
		default: usage();
		}
	}
	if (seconds <= 0 && limit == 0)
		seconds = 2;
	if (port < 1 || port > 65535 || size < 1 || batch < 1 || batch > MAX_BATCH || flows < 0 || flows > 1 << 22 ||
	    (dns && gso) || (tcp && (gso || dns || flows)))
		usage();

	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port) };
	/* A benchmark that can flood a real network is a hazard: loopback only. */
	if (inet_pton(AF_INET, dst, &sin.sin_addr) != 1 ||
	    (ntohl(sin.sin_addr.s_addr) >> 24) != 127) {
		fprintf(stderr, "gen: destination must be a 127.x.y.z address, got '%s'\n", dst);
		return 2;
	}
	int segs = gso ? GSO_SEGMENTS : 1;
	size_t msglen = tcp ? sizeof(struct iphdr) + sizeof(struct tcphdr) + (size_t)size : (size_t)size * segs;
	if (tcp && msglen > 65535) {
		fprintf(stderr, "gen: a TCP segment of %d bytes exceeds one IP packet\n", size);
		return 2;
	}
	if (!tcp && msglen > 65507) {
		fprintf(stderr, "gen: %d x %d bytes exceeds one UDP datagram\n", segs, size);
		return 2;
	}

	if (cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set) < 0)
			perror("gen: sched_setaffinity");
	}

	int fd = tcp ? socket(AF_INET, SOCK_RAW, IPPROTO_RAW) : socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) { perror("gen: socket"); return 1; }
	/* Queued packets are charged to the sender's buffer until their verdict:
	 * a big one keeps the queue full instead of stalling the sender. */
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) < 0 &&
	    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)) < 0)
		perror("gen: SO_SNDBUF");
	if (gso && setsockopt(fd, SOL_UDP, UDP_SEGMENT, &size, sizeof(size)) < 0) {
		perror("gen: UDP_SEGMENT");
		return 1;
	}
	/* Connected: no per-message route lookup (unless each message picks its source). */
	if (!flows && connect(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
		perror("gen: connect");
		return 1;
	}

	char *payload = malloc(msglen);
	if (!payload) return 1;
	memset(payload, 'x', msglen);
	if (tcp)
		tcp_segment((uint8_t *)payload, sin.sin_addr, port, size);
	static struct mmsghdr msgs[MAX_BATCH];
	static struct iovec iov[MAX_BATCH];
	static union {
		char buf[CMSG_SPACE(sizeof(struct in_pktinfo))];
		struct cmsghdr align;
	} control[MAX_BATCH];
	for (int i = 0; i < batch; i++) {
		iov[i].iov_base = payload;
		iov[i].iov_len = msglen;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
		if (flows) {
			msgs[i].msg_hdr.msg_name = &sin;
			msgs[i].msg_hdr.msg_namelen = sizeof(sin);
			msgs[i].msg_hdr.msg_control = control[i].buf;
			msgs[i].msg_hdr.msg_controllen = sizeof control[i].buf;
			struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr);
			c->cmsg_level = IPPROTO_IP;
			c->cmsg_type = IP_PKTINFO;
			c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
		}
	}
	unsigned next_flow = 0;
	static unsigned char queries[DNS_QUERIES][DNS_QUERY_MAX];
	static size_t query_len[DNS_QUERIES];
	unsigned seed = 1, next_query = 0;
	for (int q = 0; dns && q < DNS_QUERIES; q++)
		query_len[q] = dns_query(queries[q], &seed);

	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	unsigned long long sent = 0, sends = 0, errors = 0;
	double start = now(), end = start + seconds, t = start;
	while (!stop) {
		int n = batch;
		if (limit) {
			unsigned long long left = (limit - sent + segs - 1) / segs;
			if (left == 0) break;
			if (left < (unsigned long long)n) n = (int)left;
		}
		for (int i = 0; dns && i < n; i++) {
			iov[i].iov_base = queries[next_query];
			iov[i].iov_len = query_len[next_query];
			next_query = (next_query + 1) & (DNS_QUERIES - 1);
		}
		for (int i = 0; flows && i < n; i++) {
			struct in_pktinfo pi = { 0 };
			pi.ipi_spec_dst.s_addr = htonl(0x7f010000u + next_flow);
			memcpy(CMSG_DATA(CMSG_FIRSTHDR(&msgs[i].msg_hdr)), &pi, sizeof pi);
			next_flow = next_flow + 1 == (unsigned)flows ? 0 : next_flow + 1;
		}
		int r = sendmmsg(fd, msgs, n, 0);
		if (r < 0) {
			/* Refused (no listener yet), dropped by a rule, or no memory:
			 * count it and go on. */
			if (errno == ECONNREFUSED || errno == EPERM || errno == ENOBUFS ||
			    errno == EAGAIN || errno == EINTR) {
				errors++;
			} else {
				perror("gen: sendmmsg");
				return 1;
			}
		} else {
			sent += (unsigned long long)r * segs;
			sends += r;
		}
		if (seconds > 0 && (t = now()) >= end)
			break;
	}
	t = now();
	printf("sent=%llu sends=%llu errors=%llu seconds=%.3f\n", sent, sends, errors, t - start);
	return 0;
}

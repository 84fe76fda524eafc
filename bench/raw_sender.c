/* raw_sender: the C reference for nfq.send's benchmark (bench/send.sh): one
 * IPv4/UDP packet built once, sent through a raw socket with the IP header
 * included, BATCH packets per sendmmsg(), as nfq.send's flush does.
 *
 *   raw_sender [-d 198.18.0.2] [-s SIZE] [-t SECONDS] [-b BATCH] [-c CPU]
 *
 * The destination must be in 198.18.0.0/15 (RFC 2544's benchmark range),
 * which send.sh routes to a veth device in a private namespace whose peer
 * drops it: nothing leaves the machine. Prints "sent=N errors=E seconds=S".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 1024

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint16_t checksum(const uint8_t *p, size_t n)
{
	uint32_t sum = 0;
	for (size_t i = 0; i + 1 < n; i += 2)
		sum += (uint32_t)(p[i] << 8 | p[i + 1]);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

int main(int argc, char **argv)
{
	const char *dst = "198.18.0.2";
	int size = 64, batch = 64, cpu = -1, opt;
	double seconds = 2;
	while ((opt = getopt(argc, argv, "d:s:t:b:c:")) != -1) {
		switch (opt) {
		case 'd': dst = optarg; break;
		case 's': size = atoi(optarg); break;
		case 't': seconds = atof(optarg); break;
		case 'b': batch = atoi(optarg); break;
		case 'c': cpu = atoi(optarg); break;
		default:
			fprintf(stderr, "usage: raw_sender [-d 198.18.0.2] [-s SIZE] [-t SECONDS] [-b BATCH] [-c CPU]\n");
			return 2;
		}
	}
	struct sockaddr_in sin = { .sin_family = AF_INET };
	if (inet_pton(AF_INET, dst, &sin.sin_addr) != 1 || (ntohl(sin.sin_addr.s_addr) >> 17) != (198u << 7 | 18u >> 1)) {
		fprintf(stderr, "raw_sender: the destination must be in 198.18.0.0/15, got '%s'\n", dst);
		return 2;
	}
	if (size < 0 || size > 1400 || batch < 1 || batch > MAX_BATCH) {
		fprintf(stderr, "raw_sender: size 0..1400, batch 1..%d\n", MAX_BATCH);
		return 2;
	}
	if (cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof set, &set) < 0)
			perror("raw_sender: sched_setaffinity");
	}
	int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
	if (fd < 0) {
		perror("raw_sender: socket");
		return 1;
	}
	int sndbuf = 4 << 20;
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) < 0)
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);

	/* The packet nfq.send sends in the benchmark: 198.18.0.1:9 -> dst:9. */
	size_t len = 28 + (size_t)size;
	uint8_t pkt[1500] = { 0x45, 0, (uint8_t)(len >> 8), (uint8_t)len, 0, 1, 0, 0, 64, 17 };
	uint8_t src[4] = { 198, 18, 0, 1 };
	memcpy(pkt + 12, src, 4);
	memcpy(pkt + 16, &sin.sin_addr, 4);
	uint16_t c = checksum(pkt, 20);
	pkt[10] = (uint8_t)(c >> 8);
	pkt[11] = (uint8_t)c;
	pkt[21] = pkt[23] = 9;
	pkt[24] = (uint8_t)((len - 20) >> 8);
	pkt[25] = (uint8_t)(len - 20);
	memset(pkt + 28, 'x', (size_t)size);

	static struct mmsghdr msgs[MAX_BATCH];
	static struct iovec iov[MAX_BATCH];
	for (int i = 0; i < batch; i++) {
		iov[i].iov_base = pkt;
		iov[i].iov_len = len;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
		msgs[i].msg_hdr.msg_name = &sin;
		msgs[i].msg_hdr.msg_namelen = sizeof sin;
	}
	unsigned long long sent = 0, errors = 0;
	double start = now(), end = start + seconds, t = start;
	while (t < end) {
		int r = sendmmsg(fd, msgs, (unsigned)batch, 0);
		if (r < 0) {
			if (errno != ENOBUFS && errno != EINTR && errno != EAGAIN) {
				perror("raw_sender: sendmmsg");
				return 1;
			}
			errors++;
		} else {
			sent += (unsigned long long)r;
		}
		t = now();
	}
	printf("sent=%llu errors=%llu seconds=%.3f\n", sent, errors, t - start);
	return 0;
}

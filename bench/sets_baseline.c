/*
 * sets_baseline: the C baseline of bench/sets.lua. It builds a domain or an
 * address set from a list file with the core's own code, reads the queries
 * (one a line) into memory, then times RUNS passes over them calling the
 * match function directly, and prints one line: the median lookups per
 * second (in CPU time: the machine may be shared) and the hits of one pass.
 *   sets_baseline domains|ips LIST QUERIES RUNS
 * Built by `make -C bench sets_baseline` from the core's sources.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nfq_sets.h"

struct query {
	const uint8_t *p;
	size_t len;
	uint8_t addr[16];
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *buf = malloc((size_t)n + 1);
	if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
		fclose(f);
		free(buf);
		return NULL;
	}
	fclose(f);
	*len = (size_t)n;
	return buf;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s domains|ips LIST QUERIES RUNS\n", argv[0]);
		return 2;
	}
	int ips = strcmp(argv[1], "ips") == 0, runs = atoi(argv[4]);
	struct nfq_domainset *ds = NULL;
	struct nfq_ipset *is = NULL;
	if (ips ? (is = nfq_ipset_new()) == NULL || nfq_ipset_add_file(is, argv[2]) != 0
		: (ds = nfq_domainset_new()) == NULL || nfq_domainset_add_file(ds, argv[2]) != 0) {
		perror(argv[2]);
		return 1;
	}
	size_t len;
	char *text = slurp(argv[3], &len);
	if (!text) {
		perror(argv[3]);
		return 1;
	}
	size_t n = 0, cap = 1024;
	struct query *q = malloc(cap * sizeof *q);
	for (char *p = text, *end = text + len; p < end;) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
		if (n == cap)
			q = realloc(q, (cap *= 2) * sizeof *q);
		q[n].p = (const uint8_t *)p;
		q[n].len = ips ? (size_t)nfq_ipset_parse_address(p, l, q[n].addr) : l;
		n++;
		p += l + 1;
	}
	double *rate = malloc((size_t)runs * sizeof *rate);
	uint32_t hits = 0;
	for (int r = 0; r < runs; r++) {
		hits = 0;
		double t0 = now();
		for (size_t i = 0; i < n; i++)
			hits += (ips ? nfq_ipset_match(is, q[i].addr, q[i].len) : nfq_domainset_match(ds, q[i].p, q[i].len)) != 0;
		rate[r] = (double)n / (now() - t0);
	}
	qsort(rate, (size_t)runs, sizeof *rate, cmp);
	printf("%.0f %u\n", rate[runs / 2], hits);
	nfq_domainset_free(ds);
	nfq_ipset_free(is);
	free(rate);
	free(q);
	free(text);
	return 0;
}

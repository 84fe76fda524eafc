/*
 * nfq_set_common.c: the slot table, line splitting, file reading and load
 * reports of the domain and address sets.
 */
#define _GNU_SOURCE		/* mremap */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nfq_set_common.h"

struct nfq_set_span nfq_set_trim(const char *p, size_t n)
{
	while (n && nfq_set_space((unsigned char)p[0])) {
		p++;
		n--;
	}
	while (n && nfq_set_space((unsigned char)p[n - 1]))
		n--;
	return (struct nfq_set_span){ p, n };
}

struct nfq_set_span nfq_set_token(struct nfq_set_span *rest)
{
	struct nfq_set_span s = nfq_set_trim(rest->p, rest->n);
	size_t i = 0;
	while (i < s.n && !nfq_set_space((unsigned char)s.p[i]))
		i++;
	rest->p = s.p + i;
	rest->n = s.n - i;
	return (struct nfq_set_span){ s.p, i };
}

/* Arrays this big are mapped with huge pages where the kernel allows it:
 * a random read of them then costs a cache miss, not a cache miss and a
 * page walk (two, in a virtual machine). */
#define HUGE_BYTES (2u << 20)

void *nfq_set_alloc(size_t bytes)
{
	if (bytes < HUGE_BYTES)
		return calloc(1, bytes ? bytes : 1);
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		errno = ENOMEM;
		return NULL;
	}
	madvise(p, bytes, MADV_HUGEPAGE);
	return p;
}

void nfq_set_free(void *p, size_t bytes)
{
	if (bytes < HUGE_BYTES)
		free(p);
	else if (p)
		munmap(p, bytes);
}

void *nfq_set_resize(void *p, size_t old_bytes, size_t new_bytes)
{
	if (old_bytes < HUGE_BYTES && new_bytes < HUGE_BYTES)
		return realloc(p, new_bytes ? new_bytes : 1);
	if (old_bytes >= HUGE_BYTES && new_bytes >= HUGE_BYTES) {
		void *q = mremap(p, old_bytes, new_bytes, MREMAP_MAYMOVE);
		if (q == MAP_FAILED) {
			errno = ENOMEM;
			return NULL;
		}
		madvise(q, new_bytes, MADV_HUGEPAGE);
		return q;
	}
	void *q = nfq_set_alloc(new_bytes);
	if (!q)
		return NULL;
	if (p)
		memcpy(q, p, old_bytes < new_bytes ? old_bytes : new_bytes);
	nfq_set_free(p, old_bytes);
	return q;
}

/* Place every entry of the table again in one of new_size slots. */
static int rehash(struct nfq_set_slot **slots, uint32_t *mask, uint64_t new_size)
{
	uint64_t size = (uint64_t)*mask + 1;
	struct nfq_set_slot *table = nfq_set_alloc(new_size * sizeof *table);
	if (!table)
		return -1;
	uint32_t new_mask = (uint32_t)new_size - 1;
	for (uint64_t i = 0; i < size; i++) {
		struct nfq_set_slot s = (*slots)[i];
		if (!s.ref)
			continue;
		uint32_t j = s.hash & new_mask;
		while (table[j].ref)
			j = (j + 1) & new_mask;
		table[j] = s;
	}
	nfq_set_free(*slots, size * sizeof **slots);
	*slots = table;
	*mask = new_mask;
	return 0;
}

int nfq_set_reserve(struct nfq_set_slot **slots, uint32_t *mask, uint64_t want)
{
	uint64_t size = (uint64_t)*mask + 1, new_size = size;
	while (want * 2 > new_size)
		new_size *= 2;
	if (new_size == size)
		return 0;
	if (new_size > (1ull << 31)) {
		errno = ENOMEM;
		return -1;
	}
	return rehash(slots, mask, new_size);
}

void nfq_set_shrink(struct nfq_set_slot **slots, uint32_t *mask, uint32_t count)
{
	uint64_t size = (uint64_t)*mask + 1, new_size = NFQ_SET_FIRST_SLOTS;
	while ((uint64_t)count * 2 > new_size)
		new_size *= 2;
	if (new_size < size)
		rehash(slots, mask, new_size);
}

uint64_t nfq_set_count_lines(const char *text, size_t len)
{
	uint64_t n = len && text[len - 1] != '\n';
	for (const char *p = text, *end = text + len; (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++)
		n++;
	return n;
}

void nfq_set_report_bad(struct nfq_set_report *r, const char *line, size_t n)
{
	if (r->bad < NFQ_SET_SAMPLES) {
		size_t keep = n < NFQ_SET_SAMPLE_LEN - 1 ? n : NFQ_SET_SAMPLE_LEN - 1;
		r->bad_line[r->bad] = r->lines;
		memcpy(r->bad_text[r->bad], line, keep);
		r->bad_text[r->bad][keep] = 0;
	}
	r->bad++;
}

int nfq_set_each_line(const char *text, size_t len, struct nfq_set_report *r,
		      int (*add)(void *set, const char *line, size_t n), void *set)
{
	const char *end = text + len;
	while (text < end) {
		const char *nl = memchr(text, '\n', (size_t)(end - text));
		const char *stop = nl ? nl : end;
		r->lines++;
		if (add(set, text, (size_t)(stop - text)) != 0)
			return -1;
		text = nl ? nl + 1 : end;
	}
	return 0;
}

/* The whole file at path, malloc'd (the caller frees it): NULL and errno on failure. */
static char *read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	struct stat st;
	if (fstat(fd, &st) != 0)
		goto fail;
	if (S_ISDIR(st.st_mode)) {
		errno = EISDIR;
		goto fail;
	}
	/* A pipe or /proc file says 0: read until the end all the same. */
	size_t cap = st.st_size > 0 ? (size_t)st.st_size + 1 : 4096, n = 0;
	char *buf = malloc(cap);
	if (!buf)
		goto fail;
	for (;;) {
		if (n == cap) {
			char *bigger = realloc(buf, cap * 2);
			if (!bigger) {
				free(buf);
				goto fail;
			}
			buf = bigger;
			cap *= 2;
		}
		ssize_t got = read(fd, buf + n, cap - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			int e = errno;
			free(buf);
			errno = e;
			goto fail;
		}
		if (got == 0)
			break;
		n += (size_t)got;
	}
	close(fd);
	*len = n;
	return buf;
fail:;
	int e = errno;
	close(fd);
	errno = e;
	return NULL;
}

int nfq_set_grow(void **array, uint32_t *cap, uint32_t need, size_t elem)
{
	if (need <= *cap)
		return 0;
	uint64_t n = *cap ? *cap : 64;
	while (n < need)
		n *= 2;
	if (n > UINT32_MAX) {
		errno = ENOMEM;
		return -1;
	}
	void *bigger = nfq_set_resize(*array, *cap * elem, n * elem);
	if (!bigger)
		return -1;
	*array = bigger;
	*cap = (uint32_t)n;
	return 0;
}

void nfq_set_fit(void **array, uint32_t *cap, uint32_t used, size_t elem)
{
	if (!used || used >= *cap)
		return;
	void *fit = nfq_set_resize(*array, *cap * elem, used * elem);
	if (fit) {
		*array = fit;
		*cap = used;
	}
}

int nfq_set_address(const char *p, size_t n, uint8_t *out)
{
	char text[INET6_ADDRSTRLEN];
	if (n == 0 || n >= sizeof text)
		return 0;
	memcpy(text, p, n);
	text[n] = 0;
	if (memchr(text, ':', n))
		return inet_pton(AF_INET6, text, out) == 1 ? 16 : 0;
	return inet_pton(AF_INET, text, out) == 1 ? 4 : 0;
}

int nfq_set_add_file(const char *path, int (*add_text)(void *set, const char *text, size_t len), void *set)
{
	size_t len;
	char *text = read_file(path, &len);
	if (!text)
		return -1;
	int rc = add_text(set, text, len);
	int e = errno;
	free(text);
	errno = e;
	return rc;
}

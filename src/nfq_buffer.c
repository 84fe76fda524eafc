/*
 * nfq_buffer.c: the pool of packet buffers behind nfq.buffer, pkt:copy and
 * the split and fragment builders. Buffers are reused, not freed, while the
 * pool lives, so a script that makes buffers per packet allocates nothing
 * once the pool has grown to what one callback uses; a stale Lua handle can
 * always read its buffer's gen. The Lua state that owns a pool closes it;
 * buffers the script kept outlive it until they are released (their
 * finalizers run in any order at lua_close).
 */
#include <errno.h>
#include <stdlib.h>

#include "nfq_internal.h"

_Static_assert(sizeof(((struct nfq_buffer *)0)->data) == NFQ_BUFFER_SIZE, "data holds NFQ_BUFFER_SIZE bytes");
_Static_assert(sizeof(((struct nfq_buffer_pool *)0)->all) / sizeof(struct nfq_buffer *) == NFQ_BUFFER_MAX_IN_USE,
	       "all[] has room for every buffer a pool can make");

struct nfq_buffer_pool *nfq_buffer_pool_new(void)
{
	return calloc(1, sizeof(struct nfq_buffer_pool));
}

/* Free a list of buffers; how many there were. */
static uint32_t free_list(struct nfq_buffer *b)
{
	uint32_t n = 0;
	while (b) {
		struct nfq_buffer *next = b->next;
		free(b);
		b = next;
		n++;
	}
	return n;
}

void nfq_buffer_pool_close(struct nfq_buffer_pool *pool)
{
	if (!pool)
		return;
	free_list(pool->free_list);
	pool->in_use -= free_list(pool->lent_list);
	pool->free_list = pool->lent_list = NULL;
	pool->closed = 1;
	/* What is still kept holds the pool until its release. */
	if (pool->in_use == 0)
		free(pool);
}

static void unlink_lent(struct nfq_buffer_pool *pool, struct nfq_buffer *b)
{
	if (b->prev)
		b->prev->next = b->next;
	else
		pool->lent_list = b->next;
	if (b->next)
		b->next->prev = b->prev;
	b->prev = b->next = NULL;
}

int nfq_buffer_get(struct nfq_buffer_pool *pool, uint32_t n, struct nfq_buffer **out)
{
	if (n > NFQ_BUFFER_MAX_IN_USE - pool->in_use) {
		errno = ENOBUFS;
		return -1;
	}
	for (uint32_t i = 0; i < n; i++) {
		struct nfq_buffer *b = pool->free_list;
		if (b) {
			pool->free_list = b->next;
		} else {
			/* in_use < NFQ_BUFFER_MAX_IN_USE and every buffer is in
			 * use, so allocated < NFQ_BUFFER_MAX_IN_USE too. */
			b = malloc(sizeof *b);
			if (!b) {
				nfq_buffer_release_many(out, i);
				errno = ENOMEM;
				return -1;
			}
			/* Handles are never 0: that would be a NULL pointer. */
			b->gen = 1;
			b->pool = pool;
			b->index = pool->allocated;
			pool->all[pool->allocated++] = b;
		}
		b->len = 0;
		b->state = NFQ_BUF_LENT;
		b->prev = NULL;
		b->next = pool->lent_list;
		if (b->next)
			b->next->prev = b;
		pool->lent_list = b;
		pool->in_use++;
		out[i] = b;
	}
	return 0;
}

void nfq_buffer_keep(struct nfq_buffer *b)
{
	if (b->state != NFQ_BUF_LENT)
		return;
	unlink_lent(b->pool, b);
	b->state = NFQ_BUF_KEPT;
}

void nfq_buffer_release(struct nfq_buffer *b)
{
	struct nfq_buffer_pool *pool = b->pool;
	if (b->state == NFQ_BUF_FREE)
		return;
	if (b->state == NFQ_BUF_LENT)
		unlink_lent(pool, b);
	if (++b->gen == 0)
		b->gen = 1;
	b->state = NFQ_BUF_FREE;
	pool->in_use--;
	if (pool->closed) {
		free(b);
		if (pool->in_use == 0)
			free(pool);
		return;
	}
	b->next = pool->free_list;
	pool->free_list = b;
}

void nfq_buffer_release_many(struct nfq_buffer *const *b, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		nfq_buffer_release(b[i]);
}

void nfq_buffer_recycle(struct nfq_buffer_pool *pool)
{
	while (pool->lent_list)
		nfq_buffer_release(pool->lent_list);
}

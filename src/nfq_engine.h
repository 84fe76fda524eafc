/*
 * nfq_engine.h: the nfqlua engine, for C programs that run a libev loop.
 *
 * An engine is one bound queue, one Lua state running a filter script, one
 * ev_io watcher on the caller's loop, and an ev_timer there when the script
 * has on_timer. All calls must come from the thread that runs that loop,
 * except nfq_engine_interrupt(). The nfqlua daemon is a main() over this API.
 */
#ifndef NFQ_ENGINE_H
#define NFQ_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "nfq_core.h"

/* The library's API: exported, where the build hides everything else. */
#pragma GCC visibility push(default)

struct ev_loop;
struct nfq_engine;

/* Levels of the lines an engine logs. */
enum { NFQ_LOG_ERROR, NFQ_LOG_WARN, NFQ_LOG_INFO, NFQ_LOG_DEBUG };

struct nfq_engine_opts {
	const char *script;	/* path of the filter script */
	uint32_t queue_num;	/* 0..65535 */
	uint32_t mode;		/* NFQ_COPY_META or NFQ_COPY_PACKET */
	uint32_t range;		/* bytes copied per packet, 1..65535 */
	uint32_t max_len;	/* kernel queue length */
	uint32_t sock_len;	/* receive buffer bytes, 0 = sized from max_len */
	uint32_t fallback;	/* verdict for packets left without one: NFQ_DROP or NFQ_ACCEPT */
	uint32_t flags;		/* NFQ_FLAG_* queue flags */
	int offline;		/* no kernel: nfqlua --replay feeds the queue itself */
	size_t lua_mem_limit;	/* bytes each script's Lua state may use, 0 = no limit */
	/*
	 * A call into the script (loading it, a hook, a batch) that runs longer
	 * than this many ms is interrupted with a Lua error; one stuck in
	 * JIT-compiled code, where LuaJIT checks no hooks, makes the process exit
	 * with status 70 after three times as long. 0 = no watchdog.
	 */
	unsigned script_timeout_ms;
	/*
	 * The loop runs in a thread that serves only this engine (as each of the
	 * daemon's workers does). Under load the engine then takes its socket
	 * out of the loop's epoll set and waits in recvmmsg() instead, up to
	 * 10 ms at a time between runs of the loop's other watchers: the kernel
	 * does less work per packet, and other watchers may wait that long.
	 */
	int own_thread;
	/*
	 * Where the engine's lines go, one line per call without a newline,
	 * from the loop's thread (and from the watchdog's just before it ends
	 * the process). NULL: levels up to NFQ_LOG_INFO on stderr.
	 */
	void (*log)(void *log_ud, int level, const char *line);
	void *log_ud;
	/*
	 * A script called os.exit(status): the engine has logged it, and the
	 * host is expected to stop (nfq_engine_stop) and exit with status. Called
	 * on the loop's thread. NULL: os.exit raises an error in scripts.
	 */
	void (*on_exit)(void *on_exit_ud, int status);
	void *on_exit_ud;
	/*
	 * Sending (nfq.send, pkt:reject): NULL keeps it off. A sender from
	 * nfq_sender_open() (nfq_core.h), with raw sockets for a live queue,
	 * opened before the host gives up root: the engine owns it from
	 * nfq_engine_create() on, also when that fails.
	 */
	struct nfq_sender *sender;
	/*
	 * pkt:bypass() sets the bits of bypass_mask in the packet's mark to
	 * those of bypass_mark (which has no bits outside it); 0 and 0 give
	 * NFQ_BYPASS_MARK for both (nfq_core.h).
	 */
	uint32_t bypass_mark, bypass_mask;
};

/*
 * Load the script, bind the queue, run on_start and start watching the
 * socket on loop: nfq_engine_create() then nfq_engine_start(). NULL on
 * failure, with a one-line reason in err.
 */
struct nfq_engine *nfq_engine_new(struct ev_loop *loop,
				  const struct nfq_engine_opts *opts,
				  char *err, size_t errlen);

/*
 * The two halves of nfq_engine_new(), for a host that must be able to
 * interrupt a slow start from another thread: create checks and copies
 * opts (no Lua, no kernel yet); start does the rest, and on failure leaves
 * an engine to be freed with nfq_engine_free().
 */
struct nfq_engine *nfq_engine_create(struct ev_loop *loop,
				     const struct nfq_engine_opts *opts,
				     char *err, size_t errlen);
int nfq_engine_start(struct nfq_engine *e, char *err, size_t errlen);

/*
 * The host is stopping: interrupt the call into the script that is running
 * now (a slow load, on_start, reload or batch) and refuse every later one
 * but on_stop, so that the engine's packets get the fallback verdict. The
 * only call that is safe from any thread.
 */
void nfq_engine_interrupt(struct nfq_engine *e);

/*
 * Stop reading, run on_stop, give every packet still held the fallback
 * verdict and unbind. The counters stay readable. Safe to call twice.
 */
void nfq_engine_stop(struct nfq_engine *e);

/* Stop if needed, then free. Safe to call with NULL. */
void nfq_engine_free(struct nfq_engine *e);

/*
 * Load the script again into a fresh Lua state and swap it in between two
 * batches. A version that fails to load, attach or start leaves the running
 * one untouched. The old version's on_reload() table is copied to the new
 * on_start(state); packets it held are given to the new on_packet first.
 * 0, or -1; either way one line is logged and the counters say it.
 */
int nfq_engine_reload(struct nfq_engine *e);

/*
 * nfq_engine_reload() in two steps, so that a host running several engines
 * swaps all or none: prepare loads and starts the new version beside the
 * running one (0, or -1 with a one-line reason); then commit swaps it in
 * (the number of held packets handed to it) or abort drops it (counted as
 * a failed reload). The running version serves until then.
 */
int nfq_engine_reload_prepare(struct nfq_engine *e, char *err, size_t errlen);
int nfq_engine_reload_commit(struct nfq_engine *e);
void nfq_engine_reload_abort(struct nfq_engine *e);

/* The script version running: 1 at start, +1 per reload. */
unsigned nfq_engine_version(const struct nfq_engine *e);

/* The bytes the running script's Lua state uses. */
size_t nfq_engine_lua_bytes(const struct nfq_engine *e);

/* Counters; valid until nfq_engine_free(). */
const struct nfq_stats *nfq_engine_stats(const struct nfq_engine *e);

/* All counters, the script version, the kernel's drops and the Lua heap (lua_kb) as one key=value line. */
int nfq_engine_format_stats(const struct nfq_engine *e, char *buf, size_t len);

/*
 * Read the kernel's drop counters (nfq_engine_format_stats) through fd, an
 * open NFQ_KERNEL_STATS_PATH, which the engine then owns and
 * closes. That file is root's alone: a host that gives up root opens it
 * before, so that the counters stay readable.
 */
void nfq_engine_set_kernel_stats_fd(struct nfq_engine *e, int fd);

/*
 * Load and run a script's top level as nfq_engine_start() would, under
 * opts' memory limit and timeout, without touching the kernel: 0, or -1
 * and err.
 */
int nfq_engine_check_script(const struct nfq_engine_opts *opts, char *err, size_t errlen);

#pragma GCC visibility pop

#endif

/*
 * nfq_engine.c: one queue, one Lua state running a filter script, and the
 * libev watcher that feeds it: the engine behind the nfqlua daemon.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ev.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "nfq_internal.h"
#include "nfq_log.h"
#include "nfq_engine.h"

/* Batches handled per wakeup before the loop gets a chance to run timers and signals. */
#define BATCHES_PER_WAKEUP 16
/* With own_thread: the longest wait inside recvmmsg() while busy. */
#define BUSY_WAIT_MS 10
/* How deep a table handed from one script version to the next may nest. */
#define STATE_MAX_DEPTH 32

/* What a Lua state may allocate, counted by its allocator. */
struct lua_budget {
	size_t used;
	size_t limit;		/* 0: no limit */
};

/* One loaded version of the script: its own Lua state. */
struct script_state {
	const char *tag;	/* "queue N", for log lines */
	void *engine_ptr;	/* the engine, for the timeout hook */
	struct lua_budget *budget;	/* freed with the state */
	lua_State *L;
	int engine_ref;		/* the nfq.engine module */
	int traceback_ref;	/* traceback(), made once: each push would allocate */
	int hooks_ref;		/* what the script returned */
	int dispatch_ref;	/* the per-batch function */
	int redeliver_ref;	/* the per-packet function for handed-over packets */
	int timer_ref;		/* on_timer, or LUA_NOREF */
	double timer_interval;	/* seconds, 0 without on_timer */
};

struct nfq_engine {
	struct ev_loop *loop;
	ev_io io;
	ev_timer timer;		/* runs the script's on_timer */
	ev_idle busy;		/* own_thread under load: receives instead of io */
	int own_thread;
	struct nfq_queue *q;
	struct script_state cur;
	unsigned version;	/* 1 for the script loaded at start, +1 per reload */
	struct nfq_kernel_stats kernel;	/* last read while the queue was bound */
	int lua_kb;		/* the script's heap when it was stopped */
	char tag[16];		/* "queue N", for log lines */
	size_t mem_limit;	/* per Lua state, 0: none */
	/* The watchdog thread and what it watches: see nfq_engine_opts. */
	unsigned timeout_ms;
	pthread_t watchdog;
	int watchdog_running;
	atomic_int watchdog_stop;
	atomic_llong busy_since_ms;	/* when the current call into Lua began, 0 if none */
	atomic_llong hook_armed_for;	/* busy_since_ms of the call the hook is for */
	struct nfq_log_limit packet_log;	/* lines that can repeat per packet */
	char script[4096];
};

/* The engine whose state runs a hook: kept in the state's registry. */
static const char engine_key = 'e';

static void timeout_hook(lua_State *L, lua_Debug *ar)
{
	(void)ar;
	lua_sethook(L, NULL, 0, 0);
	lua_pushlightuserdata(L, (void *)&engine_key);
	lua_rawget(L, LUA_REGISTRYINDEX);
	struct nfq_engine *e = lua_touserdata(L, -1);
	lua_pop(L, 1);
	long long since = e ? atomic_load(&e->busy_since_ms) : 0;
	/* Armed for an earlier call that has ended meanwhile: nothing to stop. */
	if (!e || since == 0 || since != atomic_load(&e->hook_armed_for))
		return;
	e->q->stats.script_timeouts++;
	luaL_error(L, "script timeout: the call ran longer than %d ms", (int)e->timeout_ms);
}

static void *watchdog_main(void *arg)
{
	struct nfq_engine *e = arg;
	unsigned tick = e->timeout_ms / 4 ? e->timeout_ms / 4 : 1;
	while (!atomic_load(&e->watchdog_stop)) {
		usleep(tick * 1000);
		long long since = atomic_load(&e->busy_since_ms);
		if (since == 0)
			continue;
		long long busy = nfq_now_ms() - since;
		if (busy > 3 * (long long)e->timeout_ms) {
			/* LuaJIT checks no hook inside a compiled loop: only leaving helps. */
			nfq_log(NFQ_LOG_ERROR, "%s: script stuck for %lld ms where it cannot be interrupted (a JIT-compiled loop); exiting so that a supervisor restarts nfqlua",
				e->tag, busy);
			_exit(70);
		}
		if (busy > (long long)e->timeout_ms && atomic_load(&e->hook_armed_for) != since) {
			atomic_store(&e->hook_armed_for, since);
			/* Safe from another thread, as from a signal handler. */
			lua_sethook(e->cur.L, timeout_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
		}
	}
	return NULL;
}

static int traceback(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);
	if (!msg)
		msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
	luaL_traceback(L, L, msg, 1);
	return 1;
}

/* Log a Lua error: its first line as an error, the traceback for debugging. */
static void log_lua_error(const char *tag, const char *what, const char *msg)
{
	const char *nl = strchr(msg, '\n');
	int first = nl ? (int)(nl - msg) : (int)strlen(msg);
	nfq_log(NFQ_LOG_ERROR, "%s: %s: %.*s", tag, what, first, msg);
	if (nl)
		nfq_log(NFQ_LOG_DEBUG, "%s", nl + 1);
}

static void copy_error(char *err, size_t errlen, const char *msg)
{
	if (err && errlen)
		snprintf(err, errlen, "%s", msg ? msg : "unknown error");
}

/* Call nfq.engine[fn] with the nargs values on the stack; 0 or -1. */
static int call_engine(lua_State *L, int engine_ref, const char *fn, int nargs,
		       int nresults, int with_traceback, char *err, size_t errlen)
{
	int base = lua_gettop(L) - nargs;
	lua_pushcfunction(L, traceback);
	lua_rawgeti(L, LUA_REGISTRYINDEX, engine_ref);
	lua_getfield(L, -1, fn);
	lua_remove(L, -2);
	lua_insert(L, base + 1);
	lua_insert(L, base + 1);
	if (lua_pcall(L, nargs, nresults, with_traceback ? base + 1 : 0) != 0) {
		copy_error(err, errlen, lua_tostring(L, -1));
		lua_settop(L, base);
		return -1;
	}
	lua_remove(L, base + 1);
	return 0;
}

/* The allocator of every script state: refuses growth past the budget, so
 * a script that allocates without bound gets a Lua memory error instead of
 * taking the host down. */
static void *budget_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	struct lua_budget *b = ud;
	if (nsize == 0) {
		free(ptr);
		b->used -= osize;
		return NULL;
	}
	if (b->limit && nsize > osize && b->used + (nsize - osize) > b->limit)
		return NULL;
	void *p = realloc(ptr, nsize);
	if (p)
		b->used = b->used - osize + nsize;
	return p;
}

/*
 * Run as root, a script that someone else can change is a way to root, so
 * it is refused, as sshd and sudo refuse their files: it must belong to
 * root, not be writable by group or others, and sit in a directory that
 * others cannot write to (unless it is sticky, like /tmp). 0 or -1 and err.
 */
static int check_script_owner(const char *script, char *err, size_t errlen)
{
	struct stat st;
	if (stat(script, &st) < 0)
		return 0;	/* loading it reports why it cannot be read */
	if (st.st_uid != 0) {
		snprintf(err, errlen, "refusing to run '%s' as root: it belongs to uid %ld, who could change it; chown root '%s', or run with --user",
			 script, (long)st.st_uid, script);
		return -1;
	}
	if (st.st_mode & (S_IWGRP | S_IWOTH)) {
		snprintf(err, errlen, "refusing to run '%s' as root: it is writable by %s (mode %04o); chmod go-w '%s'",
			 script, st.st_mode & S_IWOTH ? "others" : "its group",
			 (unsigned)(st.st_mode & 07777), script);
		return -1;
	}
	char dir[4096];
	const char *slash = strrchr(script, '/');
	snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - script) + (slash == script) : 1,
		 slash ? script : ".");
	if (stat(dir, &st) == 0 && (st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX)) {
		snprintf(err, errlen, "refusing to run '%s' as root: its directory '%s' is writable by %s (mode %04o), who could replace it; chmod go-w '%s'",
			 script, dir, st.st_mode & S_IWOTH ? "others" : "its group",
			 (unsigned)(st.st_mode & 07777), dir);
		return -1;
	}
	return 0;
}

/* Open a Lua state with the nfq modules and load the script into it. */
static int state_open(struct script_state *st, const char *tag, size_t mem_limit,
		      const char *script, char *err, size_t errlen)
{
	memset(st, 0, sizeof *st);
	st->tag = tag;
	if (geteuid() == 0 && check_script_owner(script, err, errlen) < 0)
		return -1;
	st->budget = calloc(1, sizeof *st->budget);
	lua_State *L = st->budget ? lua_newstate(budget_alloc, st->budget) : NULL;
	if (!L) {
		copy_error(err, errlen, "cannot create a Lua state: out of memory");
		return -1;
	}
	st->budget->limit = mem_limit;
	st->L = L;
	luaL_openlibs(L);
	/* Modules next to the script can be required. */
	const char *slash = strrchr(script, '/');
	size_t dirlen = slash ? (size_t)(slash - script) : 1;
	lua_getglobal(L, "package");
	lua_pushlstring(L, slash ? script : ".", dirlen);
	lua_pushliteral(L, "/?.lua;");
	lua_getfield(L, -3, "path");
	lua_concat(L, 3);
	lua_setfield(L, -2, "path");
	lua_settop(L, 0);
	lua_getglobal(L, "require");
	lua_pushliteral(L, "nfq.engine");
	if (lua_pcall(L, 1, 1, 0) != 0) {
		copy_error(err, errlen, lua_tostring(L, -1));
		return -1;
	}
	st->engine_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_pushcfunction(L, traceback);
	st->traceback_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_pushstring(L, script);
	if (call_engine(L, st->engine_ref, "load", 1, 1, 0, err, errlen) < 0)
		return -1;
	st->hooks_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

/* Give the state the queue: it returns its dispatch and redeliver functions. */
static int state_attach(struct script_state *st, struct nfq_queue *q, char *err,
			size_t errlen)
{
	lua_pushlightuserdata(st->L, (void *)&engine_key);
	lua_pushlightuserdata(st->L, st->engine_ptr);
	lua_rawset(st->L, LUA_REGISTRYINDEX);
	lua_pushlightuserdata(st->L, q);
	lua_rawgeti(st->L, LUA_REGISTRYINDEX, st->hooks_ref);
	if (call_engine(st->L, st->engine_ref, "attach", 2, 4, 0, err, errlen) < 0)
		return -1;
	st->timer_interval = lua_tonumber(st->L, -1);
	lua_pop(st->L, 1);
	st->timer_ref = lua_isnil(st->L, -1) ? (lua_pop(st->L, 1), LUA_NOREF) : luaL_ref(st->L, LUA_REGISTRYINDEX);
	st->redeliver_ref = luaL_ref(st->L, LUA_REGISTRYINDEX);
	st->dispatch_ref = luaL_ref(st->L, LUA_REGISTRYINDEX);
	return 0;
}

/* Closing a state collects what it retained: see nfq_packet_release(). */
static void state_close(struct script_state *st)
{
	if (st->L)
		lua_close(st->L);
	st->L = NULL;
	free(st->budget);
	st->budget = NULL;
}

/* Call a hook with the nargs values on the stack; log its failure. */
static int call_hook(struct script_state *st, const char *name, int nargs,
		     char *err, size_t errlen)
{
	lua_State *L = st->L;
	lua_rawgeti(L, LUA_REGISTRYINDEX, st->hooks_ref);
	lua_pushstring(L, name);
	lua_insert(L, -2 - nargs);
	lua_insert(L, -2 - nargs);
	if (call_engine(L, st->engine_ref, "call_hook", 2 + nargs, 0, 1, err, errlen) < 0) {
		char what[64];
		snprintf(what, sizeof what, "%s failed", name);
		log_lua_error(st->tag, what, err);
		return -1;
	}
	return 0;
}

int nfq_engine_check_script(const char *path, char *err, size_t errlen)
{
	struct script_state st;
	int rc = state_open(&st, "check", 0, path, err, errlen);
	state_close(&st);
	return rc;
}

/* Call a per-packet Lua function until it returns normally; errors are logged. */
static int call_packet_function(struct nfq_engine *e, int ref, void *arg)
{
	lua_State *L = e->cur.L;
	lua_rawgeti(L, LUA_REGISTRYINDEX, e->cur.traceback_ref);
	lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
	int nargs = 0;
	if (arg) {
		lua_pushlightuserdata(L, arg);
		nargs = 1;
	}
	if (e->timeout_ms)
		atomic_store(&e->busy_since_ms, nfq_now_ms());
	int rc = lua_pcall(L, nargs, 0, -2 - nargs);
	if (e->timeout_ms) {
		atomic_store(&e->busy_since_ms, 0);
		if (atomic_load(&e->hook_armed_for))
			lua_sethook(L, NULL, 0, 0);
		atomic_store(&e->hook_armed_for, 0);
	}
	if (rc == LUA_ERRMEM)
		/* LuaJIT has no emergency collection: without this, what the failed
		 * call left unreachable keeps the next packets failing too. */
		lua_gc(L, LUA_GCCOLLECT, 0);
	if (rc != 0) {
		e->q->stats.script_errors++;
		if (nfq_log_allow(&e->packet_log, e->tag))
			log_lua_error(e->tag, "script error", lua_tostring(L, -1));
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
	return rc;
}

static void run_batch(struct nfq_engine *e)
{
	struct nfq_queue *q = e->q;
	while (q->pos < q->count)
		if (call_packet_function(e, e->cur.dispatch_ref, NULL) != 0)
			nfq_queue_finish_current(q);
	nfq_queue_flush(q);
}

/*
 * Busy (own_thread, after a full batch): the socket is out of the epoll
 * set and the idle watcher keeps the loop from sleeping; each run takes up
 * to BATCHES_PER_WAKEUP batches, waiting for them inside recvmmsg(). A wait
 * that ends empty means the load is gone: back to the io watcher.
 */
static void on_busy(struct ev_loop *loop, ev_idle *w, int revents)
{
	struct nfq_engine *e = w->data;
	(void)revents;
	int wait_ms = BUSY_WAIT_MS;
	if (ev_is_active(&e->timer)) {
		int due_ms = (int)(ev_timer_remaining(loop, &e->timer) * 1000);
		wait_ms = due_ms < 1 ? 1 : due_ms < wait_ms ? due_ms : wait_ms;
	}
	for (int i = 0; i < BATCHES_PER_WAKEUP; i++) {
		int n = nfq_queue_receive_in_recv(e->q, wait_ms);
		if (n < 0 && nfq_log_allow(&e->packet_log, e->tag))
			nfq_log(NFQ_LOG_WARN, "%s: %s", e->tag, e->q->errmsg);
		if (n <= 0) {
			ev_idle_stop(loop, &e->busy);
			ev_io_start(loop, &e->io);
			return;
		}
		run_batch(e);
	}
}

static void on_readable(struct ev_loop *loop, ev_io *w, int revents)
{
	struct nfq_engine *e = w->data;
	(void)revents;
	for (int i = 0; i < BATCHES_PER_WAKEUP; i++) {
		int n = nfq_queue_receive(e->q, 0);
		if (n < 0) {
			if (nfq_log_allow(&e->packet_log, e->tag))
				nfq_log(NFQ_LOG_WARN, "%s: %s", e->tag, e->q->errmsg);
			break;
		}
		if (n == 0)
			break;
		run_batch(e);
		if (e->own_thread && n == NFQ_BATCH_SLOTS) {
			ev_io_stop(loop, &e->io);
			ev_idle_start(loop, &e->busy);
			return;
		}
	}
}

/* The script's on_timer: its verdicts leave together, like a batch's. */
static void run_timer(struct nfq_engine *e)
{
	e->q->in_dispatch = 1;
	call_packet_function(e, e->cur.timer_ref, NULL);
	nfq_queue_flush(e->q);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	run_timer(w->data);
}

/* (Re)start the timer for the running version; none without on_timer or
 * off a live queue. */
static void arm_timer(struct nfq_engine *e)
{
	if (!e->io.data)
		return;
	ev_timer_stop(e->loop, &e->timer);
	if (e->cur.timer_ref == LUA_NOREF)
		return;
	ev_timer_init(&e->timer, on_timer, e->cur.timer_interval, e->cur.timer_interval);
	e->timer.data = e;
	ev_timer_start(e->loop, &e->timer);
}

/*
 * Push onto `to` a deep copy of the value at idx in `from`: nil, booleans,
 * numbers, strings and tables of them. Anything else cannot cross states.
 */
static int copy_value(lua_State *from, int idx, lua_State *to, int depth,
		      char *err, size_t errlen)
{
	if (idx < 0)
		idx = lua_gettop(from) + idx + 1;
	switch (lua_type(from, idx)) {
	case LUA_TNIL:
		lua_pushnil(to);
		return 0;
	case LUA_TBOOLEAN:
		lua_pushboolean(to, lua_toboolean(from, idx));
		return 0;
	case LUA_TNUMBER:
		lua_pushnumber(to, lua_tonumber(from, idx));
		return 0;
	case LUA_TSTRING: {
		size_t len;
		const char *str = lua_tolstring(from, idx, &len);
		lua_pushlstring(to, str, len);
		return 0;
	}
	case LUA_TTABLE:
		if (depth >= STATE_MAX_DEPTH) {
			snprintf(err, errlen, "on_reload: the state nests deeper than %d tables (a cycle?)", STATE_MAX_DEPTH);
			return -1;
		}
		lua_newtable(to);
		lua_pushnil(from);
		while (lua_next(from, idx)) {
			int top = lua_gettop(from);
			if (copy_value(from, top - 1, to, depth + 1, err, errlen) < 0 ||
			    copy_value(from, top, to, depth + 1, err, errlen) < 0)
				return -1;
			lua_rawset(to, -3);
			lua_pop(from, 1);
		}
		return 0;
	default:
		snprintf(err, errlen, "on_reload: a %s cannot cross a reload (only nil, booleans, numbers, strings and tables of them)",
			 lua_typename(from, lua_type(from, idx)));
		return -1;
	}
}

/* Copy the old version's on_reload() state onto the new state's stack. */
static int hand_state(struct script_state *from, struct script_state *to,
		      char *err, size_t errlen)
{
	int from_top = lua_gettop(from->L), to_top = lua_gettop(to->L);
	lua_rawgeti(from->L, LUA_REGISTRYINDEX, from->hooks_ref);
	if (call_engine(from->L, from->engine_ref, "save_state", 1, 1, 1, err, errlen) < 0)
		return -1;
	int rc = copy_value(from->L, -1, to->L, 0, err, errlen);
	lua_settop(from->L, from_top);
	if (rc < 0)
		lua_settop(to->L, to_top);
	return rc;
}

/* Give the new version the packets the old one held, in arrival order. */
static int hand_over_packets(struct nfq_engine *e)
{
	int n = nfq_queue_hand_over(e->q, NULL, 0);
	if (n == 0)
		return 0;
	struct nfq_packet **held = calloc((size_t)n, sizeof *held);
	if (!held)
		return -1;
	n = nfq_queue_hand_over(e->q, held, n);
	e->q->in_dispatch = 1;
	for (int i = 0; i < n; i++)
		call_packet_function(e, e->cur.redeliver_ref, held[i]);
	nfq_queue_flush(e->q);
	free(held);
	return n;
}

int nfq_engine_reload(struct nfq_engine *e)
{
	struct script_state next;
	char err[1024];

	/* Everything that can fail happens before the swap: a failure keeps the old version. */
	if (state_open(&next, e->tag, e->mem_limit, e->script, err, sizeof err) < 0)
		goto fail;
	next.engine_ptr = e;
	if (state_attach(&next, e->q, err, sizeof err) < 0)
		goto fail;
	if (hand_state(&e->cur, &next, err, sizeof err) < 0)
		goto fail;
	if (call_hook(&next, "on_start", 1, err, sizeof err) < 0)
		goto fail;

	struct script_state old = e->cur;
	e->cur = next;
	arm_timer(e);
	int n_held = hand_over_packets(e);
	/* Only husks are left in the old state: closing it verdicts nothing. */
	state_close(&old);
	e->version++;
	e->q->stats.reloads++;
	nfq_log(NFQ_LOG_INFO, "%s: reloaded %s: version %u runs now, %d held packets handed to it",
		e->tag, e->script, e->version, n_held < 0 ? 0 : n_held);
	return 0;
fail:
	e->q->stats.reload_failures++;
	nfq_log(NFQ_LOG_ERROR, "%s: reload of %s failed, version %u keeps running: %s",
		e->tag, e->script, e->version, err);
	state_close(&next);
	return -1;
}

struct nfq_engine *nfq_engine_new(struct ev_loop *loop,
				  const struct nfq_engine_opts *opts,
				  char *err, size_t errlen)
{
	struct nfq_engine *e = calloc(1, sizeof *e);
	if (!e) {
		copy_error(err, errlen, "out of memory");
		return NULL;
	}
	e->loop = loop;
	e->version = 1;
	snprintf(e->script, sizeof e->script, "%s", opts->script);
	snprintf(e->tag, sizeof e->tag, "queue %u", opts->queue_num);

	/* The script loads before the queue binds: a broken script never takes traffic. */
	e->mem_limit = opts->lua_mem_limit;
	if (state_open(&e->cur, e->tag, e->mem_limit, opts->script, err, errlen) < 0)
		goto fail;
	if (opts->offline) {
		e->q = nfq_queue_open_offline(opts->mode, opts->range);
		if (!e->q) {
			snprintf(err, errlen, "cannot open an offline queue: %s", strerror(errno));
			goto fail;
		}
		e->q->flags = opts->flags;
	} else {
		e->q = nfq_queue_open(-1);
		if (!e->q) {
			snprintf(err, errlen, "cannot open a netfilter netlink socket: %s", strerror(errno));
			goto fail;
		}
		if (nfq_queue_bind(e->q, opts->queue_num, opts->mode, opts->range,
				   opts->max_len, opts->sock_len, opts->flags) < 0) {
			copy_error(err, errlen, e->q->errmsg);
			goto fail;
		}
	}
	e->q->fallback = opts->fallback;
	e->cur.engine_ptr = e;
	if (state_attach(&e->cur, e->q, err, errlen) < 0)
		goto fail;
	e->timeout_ms = opts->script_timeout_ms;
	if (e->timeout_ms) {
		if (pthread_create(&e->watchdog, NULL, watchdog_main, e) != 0) {
			copy_error(err, errlen, "cannot start the script watchdog");
			goto fail;
		}
		e->watchdog_running = 1;
	}
	char hook_err[1024];
	if (call_hook(&e->cur, "on_start", 0, hook_err, sizeof hook_err) < 0) {
		snprintf(err, errlen, "on_start failed: %s", hook_err);
		goto fail;
	}
	if (!opts->offline) {
		ev_io_init(&e->io, on_readable, e->q->fd, EV_READ);
		e->io.data = e;
		ev_io_start(loop, &e->io);
		arm_timer(e);
		e->own_thread = opts->own_thread;
		ev_idle_init(&e->busy, on_busy);
		e->busy.data = e;
	}
	/* Packets that arrived while binding are already in the batch. */
	run_batch(e);
	return e;
fail:
	nfq_engine_free(e);
	return NULL;
}

void nfq_engine_stop(struct nfq_engine *e)
{
	if (!e)
		return;
	if (e->watchdog_running) {
		atomic_store(&e->watchdog_stop, 1);
		pthread_join(e->watchdog, NULL);
		e->watchdog_running = 0;
	}
	if (e->io.data) {
		ev_io_stop(e->loop, &e->io);
		ev_idle_stop(e->loop, &e->busy);
		ev_timer_stop(e->loop, &e->timer);
	}
	e->io.data = NULL;
	if (e->cur.L && e->cur.dispatch_ref) {
		char err[1024];
		call_hook(&e->cur, "on_stop", 0, err, sizeof err);
	}
	/* Packets the script still holds get the fallback verdict, oldest first. */
	if (e->q) {
		nfq_queue_kernel_stats(e->q, &e->kernel);
		nfq_queue_unbind(e->q);
	}
	if (e->cur.L)
		e->lua_kb = lua_gc(e->cur.L, LUA_GCCOUNT, 0);
	state_close(&e->cur);
	nfq_log_flush(&e->packet_log, e->tag);
}

void nfq_engine_free(struct nfq_engine *e)
{
	if (!e)
		return;
	nfq_engine_stop(e);
	nfq_queue_close(e->q);
	free(e);
}

void nfq_engine_set_kernel_stats_fd(struct nfq_engine *e, int fd)
{
	nfq_queue_set_stats_fd(e->q, fd);
}

struct nfq_queue *nfq_engine_queue(const struct nfq_engine *e)
{
	return e->q;
}

void nfq_engine_dispatch(struct nfq_engine *e)
{
	run_batch(e);
}

void nfq_engine_set_time(struct nfq_engine *e, double now)
{
	lua_pushnumber(e->cur.L, now);
	if (call_engine(e->cur.L, e->cur.engine_ref, "set_now", 1, 0, 0, NULL, 0) < 0)
		nfq_log(NFQ_LOG_ERROR, "%s: cannot set the script's clock", e->tag);
}

void nfq_engine_run_timer(struct nfq_engine *e)
{
	if (e->cur.timer_ref != LUA_NOREF)
		run_timer(e);
}

double nfq_engine_timer_interval(const struct nfq_engine *e)
{
	return e->cur.timer_ref != LUA_NOREF ? e->cur.timer_interval : 0;
}

const struct nfq_stats *nfq_engine_stats(const struct nfq_engine *e)
{
	return &e->q->stats;
}

int nfq_engine_format_stats(const struct nfq_engine *e, char *buf, size_t len)
{
	const struct nfq_stats *s = &e->q->stats;
	struct nfq_kernel_stats k;
	if (nfq_queue_kernel_stats(e->q, &k) < 0)
		k = e->kernel;
	int lua_kb = e->cur.L ? lua_gc(e->cur.L, LUA_GCCOUNT, 0) : e->lua_kb;
	return snprintf(buf, len,
		"received=%llu accepted=%llu dropped=%llu repeated=%llu requeued=%llu fallback=%llu script_errors=%llu script_timeouts=%llu verdict_errors=%llu enobufs=%llu reloads=%llu reload_failures=%llu version=%u kernel_queue_dropped=%lld kernel_user_dropped=%lld lua_kb=%d",
		(unsigned long long)s->received, (unsigned long long)s->accepted,
		(unsigned long long)s->dropped, (unsigned long long)s->repeated,
		(unsigned long long)s->requeued, (unsigned long long)s->fallback,
		(unsigned long long)s->script_errors, (unsigned long long)s->script_timeouts,
		(unsigned long long)s->verdict_errors,
		(unsigned long long)s->enobufs, (unsigned long long)s->reloads,
		(unsigned long long)s->reload_failures, e->version,
		(long long)k.queue_dropped, (long long)k.user_dropped, lua_kb);
}

/*
 * nfqlua --replay: hand an offline engine's queue and script to the Lua
 * driver (nfq.engine.run_offline), which reads the capture through source
 * (src/nfq_replay.c's reader, by FFI) and ends the run with on_stop and the
 * fallback verdict for what is still held. The script's state is closed
 * then, so that stopping the engine runs on_stop no second time. 0, or -1
 * with the reason in err.
 */
NFQ_INTERNAL int nfq_engine_run_offline(struct nfq_engine *e, void *source, char *err, size_t errlen)
{
	lua_State *L = e->cur.L;
	lua_pushlightuserdata(L, e->q);
	lua_rawgeti(L, LUA_REGISTRYINDEX, e->cur.hooks_ref);
	lua_pushlightuserdata(L, source);
	if (call_engine(L, e->cur.engine_ref, "run_offline", 3, 0, 0, err, errlen) < 0)
		return -1;
	e->lua_kb = lua_gc(L, LUA_GCCOUNT, 0);
	state_close(&e->cur);
	return 0;
}

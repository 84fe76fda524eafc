/*
 * nfq_engine.c: one queue, one Lua state running a filter script, and the
 * libev watcher that feeds it: the engine behind the nfqlua daemon.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "nfq_log.h"
#include "nfqlua.h"

/* Batches handled per wakeup before the loop gets a chance to run timers and signals. */
#define BATCHES_PER_WAKEUP 16

struct nfq_engine {
	struct ev_loop *loop;
	ev_io io;
	struct nfq_queue *q;
	lua_State *L;
	int engine_ref;		/* the nfq.engine module */
	int hooks_ref;		/* what the script returned */
	int dispatch_ref;	/* the per-batch function */
	char script[4096];
};

static int traceback(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);
	if (!msg)
		msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
	luaL_traceback(L, L, msg, 1);
	return 1;
}

/* Log a Lua error: its first line as an error, the traceback for debugging. */
static void log_lua_error(const char *what, const char *msg)
{
	const char *nl = strchr(msg, '\n');
	int first = nl ? (int)(nl - msg) : (int)strlen(msg);
	nfq_log(NFQ_LOG_ERROR, "%s: %.*s", what, first, msg);
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

/* A Lua state with the nfq modules; the script's directory joins package.path. */
static lua_State *new_state(const char *script, int *engine_ref, char *err,
			    size_t errlen)
{
	lua_State *L = luaL_newstate();
	if (!L) {
		copy_error(err, errlen, "cannot create a Lua state: out of memory");
		return NULL;
	}
	luaL_openlibs(L);
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
		lua_close(L);
		return NULL;
	}
	*engine_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return L;
}

static int load_script(lua_State *L, int engine_ref, const char *script,
		       char *err, size_t errlen)
{
	lua_pushstring(L, script);
	return call_engine(L, engine_ref, "load", 1, 1, 0, err, errlen);
}

int nfq_engine_check_script(const char *path, char *err, size_t errlen)
{
	int engine_ref;
	lua_State *L = new_state(path, &engine_ref, err, errlen);
	if (!L)
		return -1;
	int rc = load_script(L, engine_ref, path, err, errlen);
	lua_close(L);
	return rc;
}

static void run_batch(struct nfq_engine *e)
{
	struct nfq_queue *q = e->q;
	lua_State *L = e->L;
	while (q->pos < q->count) {
		lua_pushcfunction(L, traceback);
		lua_rawgeti(L, LUA_REGISTRYINDEX, e->dispatch_ref);
		if (lua_pcall(L, 0, 0, -2) != 0) {
			q->stats.script_errors++;
			log_lua_error("script error", lua_tostring(L, -1));
			lua_pop(L, 1);
			nfq_queue_finish_current(q);
		}
		lua_pop(L, 1);
	}
	nfq_queue_flush(q);
}

static void on_readable(struct ev_loop *loop, ev_io *w, int revents)
{
	struct nfq_engine *e = w->data;
	(void)loop;
	(void)revents;
	for (int i = 0; i < BATCHES_PER_WAKEUP; i++) {
		int n = nfq_queue_receive(e->q, 0);
		if (n < 0) {
			nfq_log(NFQ_LOG_WARN, "%s", e->q->errmsg);
			break;
		}
		if (n == 0)
			break;
		run_batch(e);
	}
}

static int call_hook(struct nfq_engine *e, const char *name)
{
	char msg[1024];
	lua_rawgeti(e->L, LUA_REGISTRYINDEX, e->hooks_ref);
	lua_pushstring(e->L, name);
	if (call_engine(e->L, e->engine_ref, "call_hook", 2, 0, 1, msg, sizeof msg) < 0) {
		char what[64];
		snprintf(what, sizeof what, "%s failed", name);
		log_lua_error(what, msg);
		return -1;
	}
	return 0;
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
	snprintf(e->script, sizeof e->script, "%s", opts->script);

	/* The script loads before the queue binds: a broken script never takes traffic. */
	e->L = new_state(opts->script, &e->engine_ref, err, errlen);
	if (!e->L)
		goto fail;
	if (load_script(e->L, e->engine_ref, opts->script, err, errlen) < 0)
		goto fail;
	e->hooks_ref = luaL_ref(e->L, LUA_REGISTRYINDEX);

	e->q = nfq_queue_open(-1);
	if (!e->q) {
		snprintf(err, errlen, "cannot open a netfilter netlink socket: %s", strerror(errno));
		goto fail;
	}
	e->q->fallback = opts->fallback;
	if (nfq_queue_bind(e->q, opts->queue_num, opts->mode, opts->range,
			   opts->max_len, opts->sock_len, 0) < 0) {
		copy_error(err, errlen, e->q->errmsg);
		goto fail;
	}

	lua_pushlightuserdata(e->L, e->q);
	lua_rawgeti(e->L, LUA_REGISTRYINDEX, e->hooks_ref);
	if (call_engine(e->L, e->engine_ref, "attach", 2, 1, 0, err, errlen) < 0)
		goto fail;
	e->dispatch_ref = luaL_ref(e->L, LUA_REGISTRYINDEX);

	if (call_hook(e, "on_start") < 0) {
		copy_error(err, errlen, "the script's on_start failed");
		goto fail;
	}
	ev_io_init(&e->io, on_readable, e->q->fd, EV_READ);
	e->io.data = e;
	ev_io_start(loop, &e->io);
	/* Packets that arrived while binding are already in the batch. */
	if (e->q->count > e->q->pos)
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
	if (e->io.data)
		ev_io_stop(e->loop, &e->io);
	e->io.data = NULL;
	if (e->L && e->dispatch_ref)
		call_hook(e, "on_stop");
	/* Packets the script still holds get the fallback verdict, oldest first. */
	if (e->q)
		nfq_queue_unbind(e->q);
	if (e->L)
		lua_close(e->L);
	e->L = NULL;
}

void nfq_engine_free(struct nfq_engine *e)
{
	if (!e)
		return;
	nfq_engine_stop(e);
	nfq_queue_close(e->q);
	free(e);
}

const struct nfq_stats *nfq_engine_stats(const struct nfq_engine *e)
{
	return &e->q->stats;
}

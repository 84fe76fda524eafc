/*
 * nfq_engine.c: one queue, one Lua state running a filter script, and the
 * libev watcher that feeds it: the engine behind the nfqlua daemon.
 *
 * Every call into a script, from loading it to on_stop, goes through
 * guarded_call(): a protected call with a traceback, under the memory
 * limit, the watchdog and the host's stop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
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
#include "nfq_engine.h"

/* Batches handled per wakeup before the loop gets a chance to run timers and signals. */
#define BATCHES_PER_WAKEUP 16
/* With own_thread: the longest wait inside recvmmsg() while busy. */
#define BUSY_WAIT_MS 10
/* How deep a table handed from one script version to the next may nest. */
#define STATE_MAX_DEPTH 32
/* Lines that can repeat per packet: at most LOG_BURST per LOG_WINDOW_MS. */
#define LOG_BURST 10
#define LOG_WINDOW_MS 5000

/* What a Lua state may allocate, counted by its allocator. */
struct lua_budget {
	size_t used;
	size_t limit;		/* 0: no limit */
};

/* One loaded version of the script: its own Lua state. */
struct script_state {
	struct lua_budget *budget;	/* freed with the state */
	lua_State *L;
	int engine_ref;		/* the nfq.engine module */
	int hooks_ref;		/* what the script returned */
	int dispatch_ref;	/* the per-batch function */
	int redeliver_ref;	/* the per-packet function for handed-over packets */
	int timer_ref;		/* on_timer, or LUA_NOREF */
	double timer_interval;	/* seconds, 0 without on_timer */
};

/* What a call into the script is: a stop interrupts every kind but on_stop. */
enum call_kind { CALL_SCRIPT, CALL_ON_STOP };

/* Why the hook set on a running call interrupts it. */
enum interrupt_reason { INTERRUPT_NONE, INTERRUPT_TIMEOUT, INTERRUPT_STOP };

/*
 * The call into a script running now. The loop's thread begins and ends
 * calls; the watchdog and nfq_engine_interrupt() set the hook that
 * interrupts one, from other threads. All of it is under lock, so that no
 * hook is ever set on a state that has been closed meanwhile.
 */
struct watch {
	pthread_mutex_t lock;
	pthread_cond_t wake;	/* the watchdog's tick, cut short to end it */
	lua_State *L;		/* NULL between calls */
	long long since_ms;
	enum call_kind kind;
	enum interrupt_reason armed;
	int watchdog_stop;
};

/* Kinds of lines that can repeat per packet, each counted when held back. */
enum { LIMIT_SCRIPT_ERROR, LIMIT_RECEIVE_ERROR, LIMIT_SEND_ERROR, LIMIT_KINDS };

struct log_limit {
	long long window_start_ms;
	unsigned logged;
	unsigned long long suppressed[LIMIT_KINDS];
};

struct nfq_engine {
	struct ev_loop *loop;
	ev_io io;
	ev_timer timer;		/* runs the script's on_timer */
	ev_idle busy;		/* own_thread under load: receives instead of io */
	int watching;		/* the watchers above are set up */
	struct nfq_engine_opts opts;	/* opts.script points to script */
	char script[4096];
	struct nfq_queue *q;
	struct script_state cur;
	struct script_state next;	/* a reload prepared and not yet committed */
	unsigned version;	/* 1 for the script loaded at start, +1 per reload */
	int started;		/* on_start succeeded: on_stop is owed */
	int lua_kb;		/* the script's heap when it was stopped */
	char tag[16];		/* "queue N", for log lines */
	struct watch watch;
	pthread_t watchdog;
	int watchdog_running;
	atomic_int stopping;	/* nfq_engine_interrupt() was called */
	int exit_status;	/* os.exit's status while the call that asked unwinds, or -1 */
	struct log_limit packet_log;
	uint64_t send_errors_logged;	/* q->stats.send_errors when last looked at */
};

/* The engine a state belongs to: kept in the state's registry. */
static const char engine_key = 'e';
/* The state's traceback function, made once: each push would allocate. */
static const char traceback_key = 't';

/* A call into the script that ended in os.exit(): logged, not an error. */
#define CALL_EXITED (-2)

static void default_log(void *ud, int level, const char *line)
{
	static const char *const names[] = { "error", "warning", "info", "debug" };
	(void)ud;
	if (level <= NFQ_LOG_INFO)
		fprintf(stderr, "nfqlua: %s: %s\n", names[level], line);
}

static void elog(const struct nfq_engine *e, int level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void elog(const struct nfq_engine *e, int level, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (e->opts.log)
		e->opts.log(e->opts.log_ud, level, line);
	else
		default_log(NULL, level, line);
}

static const char *const limit_names[LIMIT_KINDS] = { "script error", "receive error", "send error" };

/* Report the lines held back so far, if any, naming what they were. */
static void log_flush(struct nfq_engine *e)
{
	struct log_limit *l = &e->packet_log;
	char what[160] = "";
	size_t n = 0;
	for (int k = 0; k < LIMIT_KINDS; k++) {
		if (!l->suppressed[k] || n >= sizeof what)
			continue;
		n += (size_t)snprintf(what + n, sizeof what - n, "%s%llu more %s line%s", n ? " and " : "",
				      l->suppressed[k], limit_names[k], l->suppressed[k] == 1 ? "" : "s");
		l->suppressed[k] = 0;
	}
	if (n)
		elog(e, NFQ_LOG_WARN, "%s: %s suppressed (at most %d lines per %d s; the counters have them all)",
		     e->tag, what, LOG_BURST, LOG_WINDOW_MS / 1000);
}

/* 1 if a line of this kind may be logged now, 0 if it is held back. */
static int log_allow(struct nfq_engine *e, int kind)
{
	struct log_limit *l = &e->packet_log;
	long long now = nfq_now_ms();
	if (now - l->window_start_ms >= LOG_WINDOW_MS) {
		log_flush(e);
		l->window_start_ms = now;
		l->logged = 0;
	}
	if (l->logged < LOG_BURST) {
		l->logged++;
		return 1;
	}
	l->suppressed[kind]++;
	return 0;
}

static struct nfq_engine *engine_of(lua_State *L)
{
	lua_pushlightuserdata(L, (void *)&engine_key);
	lua_rawget(L, LUA_REGISTRYINDEX);
	struct nfq_engine *e = lua_touserdata(L, -1);
	lua_pop(L, 1);
	return e;
}

/* Runs in the script's thread at its next instruction once armed. */
static void interrupt_hook(lua_State *L, lua_Debug *ar)
{
	(void)ar;
	struct nfq_engine *e = engine_of(L);
	pthread_mutex_lock(&e->watch.lock);
	enum interrupt_reason why = e->watch.L == L ? e->watch.armed : INTERRUPT_NONE;
	pthread_mutex_unlock(&e->watch.lock);
	lua_sethook(L, NULL, 0, 0);
	if (why == INTERRUPT_TIMEOUT) {
		if (e->q)
			e->q->stats.script_timeouts++;
		luaL_error(L, "script timeout: the call ran longer than %d ms (--script-timeout)",
			   (int)e->opts.script_timeout_ms);
	}
	if (why == INTERRUPT_STOP)
		luaL_error(L, "interrupted: nfqlua is stopping");
}

/* With the watch locked: interrupt the running call. lua_sethook is safe
 * from another thread, as from a signal handler. */
static void arm(struct nfq_engine *e, enum interrupt_reason why)
{
	e->watch.armed = why;
	lua_sethook(e->watch.L, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* A call that began earlier and is still running, for nested calls. */
struct watch_outer {
	lua_State *L;
	long long since_ms;
	enum call_kind kind;
	enum interrupt_reason armed;
};

/* A call into L begins; -1 if the engine is stopping and kind may not run. */
static int watch_begin(struct nfq_engine *e, lua_State *L, enum call_kind kind,
		       struct watch_outer *outer)
{
	struct watch *w = &e->watch;
	pthread_mutex_lock(&w->lock);
	*outer = (struct watch_outer){ w->L, w->since_ms, w->kind, w->armed };
	w->L = L;
	w->since_ms = e->watchdog_running ? nfq_now_ms() : 0;
	w->kind = kind;
	w->armed = INTERRUPT_NONE;
	pthread_mutex_unlock(&w->lock);
	/* Read after publishing the call: nfq_engine_interrupt() sets the flag
	 * before it looks for a call, so one of the two sees the other. */
	if (kind != CALL_ON_STOP && atomic_load(&e->stopping))
		return -1;
	return 0;
}

static void watch_end(struct nfq_engine *e, const struct watch_outer *outer)
{
	struct watch *w = &e->watch;
	pthread_mutex_lock(&w->lock);
	if (w->armed != INTERRUPT_NONE)
		lua_sethook(w->L, NULL, 0, 0);
	w->L = outer->L;
	w->since_ms = outer->since_ms;
	w->kind = outer->kind;
	w->armed = outer->armed;
	pthread_mutex_unlock(&w->lock);
}

static void *watchdog_main(void *arg)
{
	struct nfq_engine *e = arg;
	struct watch *w = &e->watch;
	long long timeout = e->opts.script_timeout_ms;
	long long tick = timeout / 4 ? timeout / 4 : 1;
	pthread_mutex_lock(&w->lock);
	while (!w->watchdog_stop) {
		struct timespec until;
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += tick / 1000;
		until.tv_nsec += (tick % 1000) * 1000000;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&w->wake, &w->lock, &until);
		long long busy = w->L ? nfq_now_ms() - w->since_ms : 0;
		if (busy > 3 * timeout) {
			/* LuaJIT checks no hook inside a compiled loop: only leaving helps. */
			elog(e, NFQ_LOG_ERROR, "%s: script stuck for %lld ms where it cannot be interrupted (a JIT-compiled loop); exiting so that a supervisor restarts nfqlua",
			     e->tag, busy);
			_exit(70);
		}
		if (busy > timeout && w->armed == INTERRUPT_NONE)
			arm(e, INTERRUPT_TIMEOUT);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

void nfq_engine_interrupt(struct nfq_engine *e)
{
	atomic_store(&e->stopping, 1);
	pthread_mutex_lock(&e->watch.lock);
	if (e->watch.L && e->watch.kind != CALL_ON_STOP && e->watch.armed == INTERRUPT_NONE)
		arm(e, INTERRUPT_STOP);
	pthread_mutex_unlock(&e->watch.lock);
}

/*
 * The message handler of every call: the error with a traceback. An error
 * object that is not a string says what it is: its __tostring if that
 * works, else its type and where it was raised.
 */
static int traceback(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);
	if (!msg && luaL_getmetafield(L, 1, "__tostring")) {
		lua_pushvalue(L, 1);
		if (lua_pcall(L, 1, 1, 0) == 0 && lua_type(L, -1) == LUA_TSTRING)
			msg = lua_tostring(L, -1);
	}
	if (!msg) {
		luaL_where(L, 2);
		msg = lua_pushfstring(L, "%serror object is a %s value", lua_tostring(L, -1),
				      luaL_typename(L, 1));
	}
	luaL_traceback(L, L, msg, 1);
	return 1;
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
 * Call the function below the nargs values on top of L's stack, guarded.
 * 0 with nresults values on the stack; -1 with the error (a string with
 * its traceback) on the stack instead; CALL_EXITED, likewise, after the
 * script called os.exit(), which this reports to the host.
 */
static int guarded_call(struct nfq_engine *e, lua_State *L, enum call_kind kind,
			int nargs, int nresults)
{
	int fn = lua_gettop(L) - nargs;
	struct watch_outer outer;
	lua_pushlightuserdata(L, (void *)&traceback_key);
	lua_rawget(L, LUA_REGISTRYINDEX);
	lua_insert(L, fn);
	if (watch_begin(e, L, kind, &outer) < 0) {
		watch_end(e, &outer);
		lua_settop(L, fn - 1);
		lua_pushliteral(L, "interrupted: nfqlua is stopping");
		return -1;
	}
	int rc = lua_pcall(L, nargs, nresults, fn);
	watch_end(e, &outer);
	lua_remove(L, fn);
	if (rc == 0)
		return 0;
	if (rc == LUA_ERRMEM) {
		/* LuaJIT has no emergency collection: without this, what the failed
		 * call left unreachable keeps the next calls failing too. */
		lua_gc(L, LUA_GCCOLLECT, 0);
		void *ud;
		lua_getallocf(L, &ud);
		size_t limit = ((struct lua_budget *)ud)->limit;
		if (limit) {
			char msg[sizeof e->script + 256];
			snprintf(msg, sizeof msg, "out of memory: %s reached its Lua memory limit of %zu bytes (--lua-mem-limit); keep less in Lua or raise the limit",
				 e->script, limit);
			lua_pop(L, 1);
			lua_pushstring(L, msg);
		}
	}
	if (e->exit_status >= 0) {
		int status = e->exit_status;
		e->exit_status = -1;
		elog(e, NFQ_LOG_INFO, "%s: %s called os.exit(%d): stopping", e->tag, e->script, status);
		e->opts.on_exit(e->opts.on_exit_ud, status);
		return CALL_EXITED;
	}
	return -1;
}

/* Lua: engine.guarded_call(fn, ...) -> true, ... | false, err: a call
 * nested in another (the offline driver's batches) under the same guard. */
static int lua_guarded_call(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TFUNCTION);
	int nargs = lua_gettop(L) - 1;
	if (guarded_call(engine_of(L), L, CALL_SCRIPT, nargs, LUA_MULTRET) != 0) {
		lua_pushboolean(L, 0);
		lua_insert(L, -2);
		return 2;
	}
	lua_pushboolean(L, 1);
	lua_insert(L, 1);
	return lua_gettop(L);
}

/* Lua: os.exit(status) in a script asks the host to stop cleanly. */
static int script_exit(lua_State *L)
{
	struct nfq_engine *e = engine_of(L);
	int status = lua_isboolean(L, 1) ? !lua_toboolean(L, 1) : (int)luaL_optinteger(L, 1, 0);
	if (!e->opts.on_exit)
		return luaL_error(L, "os.exit(%d) is not available here: packets must get their verdicts; return from the script instead", status);
	e->exit_status = status;
	return luaL_error(L, "os.exit(%d): nfqlua stops", status);
}

/*
 * The error on top of L's stack, popped: its first line goes to err after
 * prefix, or to the log as an error when log_as names what failed; its
 * traceback goes to the debug log.
 */
static void take_error(struct nfq_engine *e, lua_State *L, const char *prefix,
		       char *err, size_t errlen, const char *log_as)
{
	const char *msg = lua_tostring(L, -1);
	if (!msg)
		msg = "unknown error";
	const char *nl = strchr(msg, '\n');
	int first = nl ? (int)(nl - msg) : (int)strlen(msg);
	if (err && errlen)
		snprintf(err, errlen, "%s%.*s", prefix, first, msg);
	if (log_as)
		elog(e, NFQ_LOG_ERROR, "%s: %s: %.*s", e->tag, log_as, first, msg);
	if (nl)
		elog(e, NFQ_LOG_DEBUG, "%s: %s%.*s:%s", e->tag, prefix, first, msg, nl);
	lua_pop(L, 1);
}

/*
 * Call nfq.engine[fn] with the nargs values on top of the stack, guarded:
 * 0 with nresults values, or -1 with the reason in err.
 */
static int call_engine(struct nfq_engine *e, struct script_state *st, enum call_kind kind,
		       const char *fn, int nargs, int nresults, const char *prefix,
		       char *err, size_t errlen)
{
	lua_State *L = st->L;
	lua_rawgeti(L, LUA_REGISTRYINDEX, st->engine_ref);
	lua_getfield(L, -1, fn);
	lua_remove(L, -2);
	lua_insert(L, -1 - nargs);
	if (guarded_call(e, L, kind, nargs, nresults) != 0) {
		take_error(e, L, prefix, err, errlen, NULL);
		return -1;
	}
	return 0;
}

/*
 * A directory on the way to a file root runs, and each directory above it:
 * whoever owns one, or can write to one that is not sticky, could put
 * another file in its place. 0 or -1 and err.
 */
static int check_directories(const char *path, const char *dir, char *err, size_t errlen)
{
	char real[PATH_MAX];
	if (!realpath(dir, real))
		return 0;	/* loading the file reports why it cannot be read */
	for (;;) {
		struct stat st;
		if (stat(real, &st) < 0)
			return 0;
		if (st.st_uid != 0) {
			snprintf(err, errlen, "refusing to run '%s' as root: the directory '%s' belongs to uid %ld, who could replace it; chown root '%s', or run with --user",
				 path, real, (long)st.st_uid, real);
			return -1;
		}
		if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX)) {
			snprintf(err, errlen, "refusing to run '%s' as root: the directory '%s' is writable by %s (mode %04o), who could replace it; chmod go-w '%s'",
				 path, real, st.st_mode & S_IWOTH ? "others" : "its group",
				 (unsigned)(st.st_mode & 07777), real);
			return -1;
		}
		char *slash = strrchr(real, '/');
		if (!slash || slash == real) {
			if (strcmp(real, "/") == 0)
				return 0;
			real[1] = '\0';
		} else {
			*slash = '\0';
		}
	}
}

/*
 * Run as root, a file that someone else can change is a way to root, so
 * it is refused, as sshd and sudo refuse their files: it must belong to
 * root, not be writable by group or others, and sit in directories, up to
 * /, that only root can change (sticky ones, like /tmp, are fine), both
 * where it is named and where a symbolic link leads. 0 or -1 and err.
 */
static int check_file_owner(const char *path, char *err, size_t errlen)
{
	struct stat st;
	if (stat(path, &st) < 0)
		return 0;	/* loading it reports why it cannot be read */
	if (st.st_uid != 0) {
		snprintf(err, errlen, "refusing to run '%s' as root: it belongs to uid %ld, who could change it; chown root '%s', or run with --user",
			 path, (long)st.st_uid, path);
		return -1;
	}
	if (st.st_mode & (S_IWGRP | S_IWOTH)) {
		snprintf(err, errlen, "refusing to run '%s' as root: it is writable by %s (mode %04o); chmod go-w '%s'",
			 path, st.st_mode & S_IWOTH ? "others" : "its group",
			 (unsigned)(st.st_mode & 07777), path);
		return -1;
	}
	char dir[PATH_MAX], target[PATH_MAX];
	const char *slash = strrchr(path, '/');
	snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) + (slash == path) : 1,
		 slash ? path : ".");
	if (check_directories(path, dir, err, errlen) < 0)
		return -1;
	if (!realpath(path, target))
		return 0;
	*strrchr(target, '/') = '\0';
	return check_directories(path, target[0] ? target : "/", err, errlen);
}

/* Lua: check_owner(path) -> true | nil, err, for every file a root script loads. */
static int lua_check_owner(lua_State *L)
{
	char err[1024];
	if (check_file_owner(luaL_checkstring(L, 1), err, sizeof err) < 0) {
		lua_pushnil(L);
		lua_pushstring(L, err);
		return 2;
	}
	lua_pushboolean(L, 1);
	return 1;
}

/* Lua: log(is_warning, line), a script module's line in the engine's log. */
static int lua_engine_log(lua_State *L)
{
	struct nfq_engine *e = engine_of(L);
	elog(e, lua_toboolean(L, 1) ? NFQ_LOG_WARN : NFQ_LOG_INFO, "%s: %s", e->tag, luaL_checkstring(L, 2));
	return 0;
}

/* Under lua_cpcall: the standard libraries, os.exit replaced. */
static int open_libs(lua_State *L)
{
	luaL_openlibs(L);
	lua_getglobal(L, "os");
	lua_pushcfunction(L, script_exit);
	lua_setfield(L, -2, "exit");
	lua_pushlightuserdata(L, (void *)&traceback_key);
	lua_pushcfunction(L, traceback);
	lua_rawset(L, LUA_REGISTRYINDEX);
	return 0;
}

/* Closing a state collects what it retained: see nfq_packet_release(). */
static void state_close(struct script_state *st)
{
	if (st->L)
		lua_close(st->L);
	free(st->budget);
	memset(st, 0, sizeof *st);
}

/*
 * Open a Lua state with the nfq modules and run the script's top level in
 * it, all under the state's memory limit and the watchdog.
 */
static int state_open(struct nfq_engine *e, struct script_state *st, char *err, size_t errlen)
{
	memset(st, 0, sizeof *st);
	int as_root = geteuid() == 0;
	if (as_root && check_file_owner(e->script, err, errlen) < 0)
		return -1;
	st->budget = calloc(1, sizeof *st->budget);
	lua_State *L = st->budget ? lua_newstate(budget_alloc, st->budget) : NULL;
	if (!L) {
		snprintf(err, errlen, "cannot create a Lua state: out of memory");
		return -1;
	}
	st->L = L;
	st->budget->limit = e->opts.lua_mem_limit;
	lua_pushlightuserdata(L, (void *)&engine_key);
	lua_pushlightuserdata(L, e);
	lua_rawset(L, LUA_REGISTRYINDEX);
	if (lua_cpcall(L, open_libs, NULL) != 0) {
		snprintf(err, errlen, "cannot open the Lua libraries: %s", lua_tostring(L, -1));
		return -1;
	}
	lua_getglobal(L, "require");
	lua_pushliteral(L, "nfq.engine");
	if (guarded_call(e, L, CALL_SCRIPT, 1, 1) != 0) {
		take_error(e, L, "", err, errlen, NULL);
		return -1;
	}
	lua_pushcfunction(L, lua_guarded_call);
	lua_setfield(L, -2, "guarded_call");
	/* What outlives a reload (named flow tables) is kept per engine. */
	lua_pushlightuserdata(L, e);
	lua_setfield(L, -2, "scope");
	lua_pushcfunction(L, lua_engine_log);
	lua_setfield(L, -2, "log");
	st->engine_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_pushstring(L, e->script);
	if (as_root)
		lua_pushcfunction(L, lua_check_owner);
	else
		lua_pushnil(L);
	if (call_engine(e, st, CALL_SCRIPT, "load", 2, 2, "", err, errlen) < 0)
		return -1;
	if (lua_isstring(L, -1))
		elog(e, NFQ_LOG_WARN, "%s: %s", e->tag, lua_tostring(L, -1));
	lua_pop(L, 1);
	st->hooks_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

/* Give the state the queue: it returns its dispatch and redeliver functions. */
static int state_attach(struct nfq_engine *e, struct script_state *st, char *err, size_t errlen)
{
	lua_State *L = st->L;
	lua_pushlightuserdata(L, e->q);
	lua_rawgeti(L, LUA_REGISTRYINDEX, st->hooks_ref);
	if (call_engine(e, st, CALL_SCRIPT, "attach", 2, 4, "", err, errlen) < 0)
		return -1;
	st->timer_interval = lua_tonumber(L, -1);
	lua_pop(L, 1);
	st->timer_ref = lua_isnil(L, -1) ? (lua_pop(L, 1), LUA_NOREF) : luaL_ref(L, LUA_REGISTRYINDEX);
	st->redeliver_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	st->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

/* Call the script's hook `name` with the nargs values on top of the stack. */
static int call_hook(struct nfq_engine *e, struct script_state *st, enum call_kind kind,
		     const char *name, int nargs, char *err, size_t errlen)
{
	lua_State *L = st->L;
	char prefix[64];
	snprintf(prefix, sizeof prefix, "%s failed: ", name);
	lua_rawgeti(L, LUA_REGISTRYINDEX, st->hooks_ref);
	lua_pushstring(L, name);
	lua_insert(L, -2 - nargs);
	lua_insert(L, -2 - nargs);
	return call_engine(e, st, kind, "call_hook", 2 + nargs, 0, prefix, err, errlen);
}

/* Call a per-packet Lua function (a batch, on_timer, a handed-over packet);
 * its error is logged and counted, its packet left for the caller. */
static int call_packets(struct nfq_engine *e, int ref, void *arg)
{
	lua_State *L = e->cur.L;
	lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
	if (arg)
		lua_pushlightuserdata(L, arg);
	int rc = guarded_call(e, L, CALL_SCRIPT, arg ? 1 : 0, 0);
	if (rc == -1) {
		e->q->stats.script_errors++;
		if (log_allow(e, LIMIT_SCRIPT_ERROR))
			take_error(e, L, "", NULL, 0, "script error");
		else
			lua_pop(L, 1);
	}
	return rc;
}

/*
 * Send the verdicts and the packets sent, in order. Packets the kernel
 * refused to send are counted; one line says why (rate-limited, as the
 * script's errors are).
 */
static void flush(struct nfq_engine *e)
{
	struct nfq_queue *q = e->q;
	nfq_queue_flush(q);
	if (q->stats.send_errors == e->send_errors_logged)
		return;
	uint64_t n = q->stats.send_errors - e->send_errors_logged;
	e->send_errors_logged = q->stats.send_errors;
	if (log_allow(e, LIMIT_SEND_ERROR))
		elog(e, NFQ_LOG_WARN, "%s: %llu sent packet%s refused, the last: %s", e->tag, (unsigned long long)n,
		     n == 1 ? "" : "s", nfq_queue_send_error(q));
}

/*
 * Give the batch to the script. A failed call leaves its packet to the
 * fallback verdict and goes on with the next; a call that could not start
 * (the engine is stopping) leaves the whole rest to it.
 */
static void run_batch(struct nfq_engine *e)
{
	struct nfq_queue *q = e->q;
	while (q->pos < q->count) {
		uint32_t before = q->pos;
		if (call_packets(e, e->cur.dispatch_ref, NULL) == 0)
			continue;
		if (q->pos == before)
			while (q->pos < q->count)
				nfq_packet_finish(&q->pkts[q->pos++]);
		else
			nfq_queue_finish_current(q);
	}
	flush(e);
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
		if (n < 0 && log_allow(e, LIMIT_RECEIVE_ERROR))
			elog(e, NFQ_LOG_WARN, "%s: %s", e->tag, e->q->errmsg);
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
			if (log_allow(e, LIMIT_RECEIVE_ERROR))
				elog(e, NFQ_LOG_WARN, "%s: %s", e->tag, e->q->errmsg);
			break;
		}
		if (n == 0)
			break;
		run_batch(e);
		if (e->opts.own_thread && n == NFQ_BATCH_SLOTS) {
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
	call_packets(e, e->cur.timer_ref, NULL);
	flush(e);
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
	if (!e->watching)
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

/* What copy_into runs with: a copy can fail for memory in the new state. */
struct state_copy {
	lua_State *from;
	char *err;
	size_t errlen;
	int rc;
};

static const char handed_state_key = 'h';

/* Under lua_cpcall on the new state: copy the old state's top value into
 * the new state's registry. */
static int copy_into(lua_State *to)
{
	struct state_copy *c = lua_touserdata(to, 1);
	lua_pushlightuserdata(to, (void *)&handed_state_key);
	c->rc = copy_value(c->from, -1, to, 0, c->err, c->errlen);
	if (c->rc == 0)
		lua_rawset(to, LUA_REGISTRYINDEX);
	return 0;
}

/* Push onto the new state the old version's on_reload() state. */
static int hand_state(struct nfq_engine *e, struct script_state *from, struct script_state *to,
		      char *err, size_t errlen)
{
	int from_top = lua_gettop(from->L);
	lua_rawgeti(from->L, LUA_REGISTRYINDEX, from->hooks_ref);
	if (call_engine(e, from, CALL_SCRIPT, "save_state", 1, 1, "", err, errlen) < 0)
		return -1;
	struct state_copy c = { from->L, err, errlen, -1 };
	if (lua_cpcall(to->L, copy_into, &c) != 0) {
		snprintf(err, errlen, "on_reload: the state does not fit in the new version's Lua memory limit");
		lua_pop(to->L, 1);
		c.rc = -1;
	}
	lua_settop(from->L, from_top);
	if (c.rc < 0)
		return -1;
	lua_pushlightuserdata(to->L, (void *)&handed_state_key);
	lua_rawget(to->L, LUA_REGISTRYINDEX);
	lua_pushlightuserdata(to->L, (void *)&handed_state_key);
	lua_pushnil(to->L);
	lua_rawset(to->L, LUA_REGISTRYINDEX);
	return 0;
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
		call_packets(e, e->cur.redeliver_ref, held[i]);
	flush(e);
	free(held);
	return n;
}

int nfq_engine_reload_prepare(struct nfq_engine *e, char *err, size_t errlen)
{
	state_close(&e->next);
	/* Everything that can fail happens before the swap: a failure keeps the old version. */
	if (state_open(e, &e->next, err, errlen) < 0 ||
	    state_attach(e, &e->next, err, errlen) < 0 ||
	    hand_state(e, &e->cur, &e->next, err, errlen) < 0 ||
	    call_hook(e, &e->next, CALL_SCRIPT, "on_start", 1, err, errlen) < 0) {
		state_close(&e->next);
		return -1;
	}
	return 0;
}

int nfq_engine_reload_commit(struct nfq_engine *e)
{
	if (!e->next.L)
		return -1;
	struct script_state old = e->cur;
	e->cur = e->next;
	memset(&e->next, 0, sizeof e->next);
	arm_timer(e);
	int n_held = hand_over_packets(e);
	/* Only husks are left in the old state: closing it verdicts nothing. */
	state_close(&old);
	e->version++;
	e->q->stats.reloads++;
	return n_held < 0 ? 0 : n_held;
}

void nfq_engine_reload_abort(struct nfq_engine *e)
{
	state_close(&e->next);
	e->q->stats.reload_failures++;
}

int nfq_engine_reload(struct nfq_engine *e)
{
	char err[1024];
	if (nfq_engine_reload_prepare(e, err, sizeof err) < 0) {
		nfq_engine_reload_abort(e);
		elog(e, NFQ_LOG_ERROR, "%s: reload of %s failed, version %u keeps running: %s",
		     e->tag, e->script, e->version, err);
		return -1;
	}
	int n_held = nfq_engine_reload_commit(e);
	elog(e, NFQ_LOG_INFO, "%s: reloaded %s: version %u runs now, %d held packets handed to it",
	     e->tag, e->script, e->version, n_held);
	return 0;
}

unsigned nfq_engine_version(const struct nfq_engine *e)
{
	return e->version;
}

size_t nfq_engine_lua_bytes(const struct nfq_engine *e)
{
	if (!e->cur.L)
		return (size_t)e->lua_kb * 1024;
	return (size_t)lua_gc(e->cur.L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(e->cur.L, LUA_GCCOUNTB, 0);
}

struct nfq_engine *nfq_engine_create(struct ev_loop *loop,
				     const struct nfq_engine_opts *opts,
				     char *err, size_t errlen)
{
	if (!opts->script || strlen(opts->script) >= sizeof ((struct nfq_engine *)0)->script) {
		snprintf(err, errlen, "the script path is missing or longer than 4095 bytes");
		nfq_sender_close(opts->sender);
		return NULL;
	}
	if (opts->bypass_mark & ~opts->bypass_mask) {
		snprintf(err, errlen, "the bypass mark 0x%x has bits outside its mask 0x%x",
			 opts->bypass_mark, opts->bypass_mask);
		nfq_sender_close(opts->sender);
		return NULL;
	}
	struct nfq_engine *e = calloc(1, sizeof *e);
	if (!e) {
		snprintf(err, errlen, "out of memory");
		nfq_sender_close(opts->sender);
		return NULL;
	}
	e->loop = loop;
	e->opts = *opts;
	snprintf(e->script, sizeof e->script, "%s", opts->script);
	e->opts.script = e->script;
	e->version = 1;
	e->exit_status = -1;
	snprintf(e->tag, sizeof e->tag, "queue %u", opts->queue_num);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&e->watch.wake, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&e->watch.lock, NULL);
	if (opts->script_timeout_ms) {
		if (pthread_create(&e->watchdog, NULL, watchdog_main, e) != 0) {
			snprintf(err, errlen, "cannot start the script watchdog");
			nfq_engine_free(e);
			return NULL;
		}
		e->watchdog_running = 1;
	}
	return e;
}

int nfq_engine_start(struct nfq_engine *e, char *err, size_t errlen)
{
	const struct nfq_engine_opts *opts = &e->opts;
	/* The script loads before the queue binds: a broken script never takes traffic. */
	if (state_open(e, &e->cur, err, errlen) < 0)
		return -1;
	if (opts->offline) {
		e->q = nfq_queue_open_offline(opts->mode, opts->range);
		if (!e->q) {
			snprintf(err, errlen, "cannot open an offline queue: %s", strerror(errno));
			return -1;
		}
		e->q->flags = opts->flags;
	} else {
		e->q = nfq_queue_open(-1);
		if (!e->q) {
			snprintf(err, errlen, "cannot open a netfilter netlink socket: %s", strerror(errno));
			return -1;
		}
		if (nfq_queue_bind(e->q, opts->queue_num, opts->mode, opts->range,
				   opts->max_len, opts->sock_len, opts->flags) < 0) {
			snprintf(err, errlen, "%s", e->q->errmsg);
			return -1;
		}
	}
	e->q->fallback = opts->fallback;
	if (opts->bypass_mask) {
		e->q->bypass_mark = opts->bypass_mark;
		e->q->bypass_mask = opts->bypass_mask;
	}
	/* The queue owns the sender from here on. */
	nfq_queue_set_sender(e->q, e->opts.sender);
	e->opts.sender = NULL;
	if (state_attach(e, &e->cur, err, errlen) < 0 ||
	    call_hook(e, &e->cur, CALL_SCRIPT, "on_start", 0, err, errlen) < 0)
		return -1;
	e->started = 1;
	if (!opts->offline) {
		ev_io_init(&e->io, on_readable, e->q->fd, EV_READ);
		e->io.data = e;
		ev_io_start(e->loop, &e->io);
		ev_idle_init(&e->busy, on_busy);
		e->busy.data = e;
		e->watching = 1;
		arm_timer(e);
	}
	/* Packets that arrived while binding are already in the batch. */
	run_batch(e);
	return 0;
}

struct nfq_engine *nfq_engine_new(struct ev_loop *loop,
				  const struct nfq_engine_opts *opts,
				  char *err, size_t errlen)
{
	struct nfq_engine *e = nfq_engine_create(loop, opts, err, errlen);
	if (e && nfq_engine_start(e, err, errlen) < 0) {
		nfq_engine_free(e);
		return NULL;
	}
	return e;
}

void nfq_engine_stop(struct nfq_engine *e)
{
	if (!e)
		return;
	if (e->watching) {
		ev_io_stop(e->loop, &e->io);
		ev_idle_stop(e->loop, &e->busy);
		ev_timer_stop(e->loop, &e->timer);
		e->watching = 0;
	}
	state_close(&e->next);
	if (e->started) {
		char err[1024];
		e->started = 0;
		if (call_hook(e, &e->cur, CALL_ON_STOP, "on_stop", 0, err, sizeof err) < 0)
			elog(e, NFQ_LOG_ERROR, "%s: %s", e->tag, err);
	}
	/* Packets the script still holds get the fallback verdict, oldest first. */
	if (e->q) {
		nfq_queue_unbind(e->q);
	}
	if (e->cur.L)
		e->lua_kb = lua_gc(e->cur.L, LUA_GCCOUNT, 0);
	state_close(&e->cur);
	log_flush(e);
}

void nfq_engine_free(struct nfq_engine *e)
{
	if (!e)
		return;
	nfq_engine_stop(e);
	if (e->watchdog_running) {
		pthread_mutex_lock(&e->watch.lock);
		e->watch.watchdog_stop = 1;
		pthread_cond_signal(&e->watch.wake);
		pthread_mutex_unlock(&e->watch.lock);
		pthread_join(e->watchdog, NULL);
	}
	pthread_cond_destroy(&e->watch.wake);
	pthread_mutex_destroy(&e->watch.lock);
	nfq_queue_close(e->q);
	nfq_sender_close(e->opts.sender);
	free(e);
}

int nfq_engine_check_script(const struct nfq_engine_opts *opts, char *err, size_t errlen)
{
	struct nfq_engine_opts check = *opts;
	check.sender = NULL;	/* stays the caller's */
	struct nfq_engine *e = nfq_engine_create(NULL, &check, err, errlen);
	if (!e)
		return -1;
	snprintf(e->tag, sizeof e->tag, "check");
	int rc = state_open(e, &e->cur, err, errlen);
	nfq_engine_free(e);
	return rc;
}

void nfq_engine_set_kernel_stats_fd(struct nfq_engine *e, int fd)
{
	nfq_queue_set_stats_fd(e->q, fd);
}

const struct nfq_stats *nfq_engine_stats(const struct nfq_engine *e)
{
	return &e->q->stats;
}

int nfq_engine_format_stats(const struct nfq_engine *e, char *buf, size_t len)
{
	const struct nfq_stats *s = &e->q->stats;
	struct nfq_kernel_stats k;	/* after the unbind, as they were then */
	nfq_queue_kernel_stats(e->q, &k);
	int lua_kb = e->cur.L ? lua_gc(e->cur.L, LUA_GCCOUNT, 0) : e->lua_kb;
	return snprintf(buf, len,
		"received=%llu accepted=%llu dropped=%llu repeated=%llu requeued=%llu fallback=%llu script_errors=%llu script_timeouts=%llu verdict_errors=%llu enobufs=%llu sent=%llu send_errors=%llu reloads=%llu reload_failures=%llu version=%u kernel_queue_dropped=%lld kernel_user_dropped=%lld lua_kb=%d",
		(unsigned long long)s->received, (unsigned long long)s->accepted,
		(unsigned long long)s->dropped, (unsigned long long)s->repeated,
		(unsigned long long)s->requeued, (unsigned long long)s->fallback,
		(unsigned long long)s->script_errors, (unsigned long long)s->script_timeouts,
		(unsigned long long)s->verdict_errors,
		(unsigned long long)s->enobufs, (unsigned long long)s->sent,
		(unsigned long long)s->send_errors, (unsigned long long)s->reloads,
		(unsigned long long)s->reload_failures, e->version,
		(long long)k.queue_dropped, (long long)k.user_dropped, lua_kb);
}

/*
 * nfqlua --replay: hand an offline engine's queue and script to the Lua
 * driver (nfq.engine.run_offline), which reads the capture through source
 * (src/nfq_replay.c's reader, by FFI) and ends the run with on_stop and the
 * fallback verdict for what is still held. Only the driver's calls into the
 * script are guarded, each on its own, not the run as a whole. 0, or -1
 * with the reason in err.
 */
int nfq_engine_run_offline(struct nfq_engine *e, void *source, char *err, size_t errlen)
{
	lua_State *L = e->cur.L;
	lua_pushlightuserdata(L, (void *)&traceback_key);
	lua_rawget(L, LUA_REGISTRYINDEX);
	lua_rawgeti(L, LUA_REGISTRYINDEX, e->cur.engine_ref);
	lua_getfield(L, -1, "run_offline");
	lua_remove(L, -2);
	lua_pushlightuserdata(L, e->q);
	lua_rawgeti(L, LUA_REGISTRYINDEX, e->cur.hooks_ref);
	lua_pushlightuserdata(L, source);
	int rc = lua_pcall(L, 3, 0, -5);
	if (rc != 0)
		take_error(e, L, "", err, errlen, NULL);
	lua_pop(L, 1);
	if (rc != 0)
		return -1;
	/* The driver ran on_stop. */
	e->started = 0;
	return 0;
}

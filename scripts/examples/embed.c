/*
 * embed.c: a C program with its own libev loop that embeds the nfqlua
 * engine: a queue, a Lua filter script, reload and counters, next to the
 * host's own timer.
 *
 *   make lib
 *   cc scripts/examples/embed.c -Isrc -Lbuild -lnfqlua -lev -Wl,-rpath,$PWD/build -o embed
 *   ./embed scripts/examples/drop_word.lua 1
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <ev.h>

#include "nfq_engine.h"

static struct nfq_engine *engine;

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	const struct nfq_stats *s = nfq_engine_stats(engine);
	printf("host timer: %llu packets, %llu accepted, %llu dropped\n",
	       (unsigned long long)s->received, (unsigned long long)s->accepted,
	       (unsigned long long)s->dropped);
	fflush(stdout);
}

static void on_hup(struct ev_loop *loop, ev_signal *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	nfq_engine_reload(engine);
}

static void on_term(struct ev_loop *loop, ev_signal *w, int revents)
{
	(void)w;
	(void)revents;
	ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: embed SCRIPT QUEUE\n");
		return 2;
	}
	struct nfq_engine_opts opts = {
		.script = argv[1],
		.queue_num = (uint32_t)atoi(argv[2]),
		.mode = NFQ_COPY_PACKET,
		.range = 65535,
		.max_len = 1024,
		.fallback = NFQ_ACCEPT,
		.flags = NFQ_FLAG_GSO,
	};
	struct ev_loop *loop = EV_DEFAULT;
	char err[1024];
	engine = nfq_engine_new(loop, &opts, err, sizeof err);
	if (!engine) {
		fprintf(stderr, "embed: %s\n", err);
		return 1;
	}
	ev_timer tick;
	ev_signal hup, term;
	ev_timer_init(&tick, on_tick, 0.2, 0.2);
	ev_signal_init(&hup, on_hup, SIGHUP);
	ev_signal_init(&term, on_term, SIGTERM);
	ev_timer_start(loop, &tick);
	ev_signal_start(loop, &hup);
	ev_signal_start(loop, &term);
	ev_run(loop, 0);
	nfq_engine_free(engine);
	return 0;
}

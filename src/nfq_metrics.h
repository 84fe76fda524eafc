/*
 * nfq_metrics.h: metrics that scripts define (nfq.metric), and the text a
 * Prometheus server scrapes.
 *
 * A metric is a family (name, help, kind, label names) of series (one per
 * set of label values). Each series has one cell per worker thread: a worker
 * writes only its own cells, with plain stores from JIT-compiled Lua and no
 * lock; a scrape sums the cells of every worker. The registry (families,
 * series, the cells' columns) is process-wide and outlives every Lua state,
 * so a script that declares a metric again after a reload gets the same
 * series with their values.
 */
#ifndef NFQ_METRICS_H
#define NFQ_METRICS_H

#include <stddef.h>
#include <stdint.h>

#pragma GCC visibility push(default)
/* BEGIN CDEF */
enum {
	NFQ_METRIC_COUNTER = 0,
	NFQ_METRIC_GAUGE = 1
};

/* Formats of the text: Prometheus' text format 0.0.4, or OpenMetrics 1.0.0. */
enum {
	NFQ_METRICS_TEXT = 0,
	NFQ_METRICS_OPENMETRICS = 1
};

enum {
	NFQ_METRIC_MAX_LABELS = 8,
	NFQ_METRIC_MAX_FAMILIES = 256,
	NFQ_METRIC_MAX_SERIES = 4096,
	NFQ_METRIC_MAX_WORKERS = 64
};

/*
 * A series' cell in the calling thread's worker column; a script's series
 * handle is a pointer to one (one type per kind, for their methods).
 */
struct nfq_metric_counter {
	double value;
};
struct nfq_metric_gauge {
	double value;
};

/*
 * Declare a family, or find the one declared before with the same name, kind
 * and label names (a reload declares its metrics again). Its index, or -1
 * with a one-line reason in err (a bad name, or a conflict with the family
 * of that name).
 */
int nfq_metric_declare(int kind, const char *name, const char *help, const char *const *labels,
		       int n_labels, char *err, size_t errlen);

/*
 * The calling worker's cell of the family's series with these label values
 * (n_values must be the family's label count), made on first use. The cell
 * stays valid until the process exits. NULL with a reason in err.
 */
double *nfq_metric_series(int family, const char *const *values, int n_values, char *err, size_t errlen);

/*
 * Every family, with build info, as text in format (NFQ_METRICS_*): a string
 * that nfq_metrics_free() frees, with its length in *len; NULL when out of
 * memory.
 */
char *nfq_metrics_render(int format, size_t *len);
void nfq_metrics_free(char *text);
/* END CDEF */
#pragma GCC visibility pop

/*
 * The worker column the calling thread's series use: the daemon gives each
 * worker thread its index (0..NFQ_METRIC_MAX_WORKERS-1) before it loads the
 * script; every other thread uses column 0 (library hosts run their scripts
 * in one thread).
 */
void nfq_metrics_set_worker(unsigned index);

/* A growing text buffer; `failed` once an allocation failed. */
struct nfq_metrics_text {
	char *buf;
	size_t len, cap;
	int failed;
};

void nfq_metrics_printf(struct nfq_metrics_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A family's # HELP and # TYPE lines; name is a counter's without _total. */
void nfq_metrics_header(struct nfq_metrics_text *t, int format, const char *name, int kind, const char *help);

/* A number as the text formats write it (+Inf, -Inf, NaN, shortest exact). */
void nfq_metrics_value(struct nfq_metrics_text *t, double v);

/* A label value between quotes, with \, " and newlines escaped. */
void nfq_metrics_label_value(struct nfq_metrics_text *t, const char *v);

/* The build info and every script-defined family. */
void nfq_metrics_write_registry(struct nfq_metrics_text *t, int format);

/* The text's end: "# EOF" in OpenMetrics. The finished string, or NULL (freed) on failure. */
char *nfq_metrics_finish(struct nfq_metrics_text *t, int format, size_t *len);

#endif

/*
 * nfq_metrics.c: the registry of script-defined metrics and the text
 * formats a Prometheus server scrapes.
 *
 * Declaring a family and making a series (script load time) and rendering
 * (a scrape) take `lock`; adding to a cell (per packet) takes nothing: each
 * worker thread writes only its own column with plain stores, and a scrape
 * reads each cell with a relaxed load. A scrape's sum is therefore each
 * worker's value at some moment during the scrape: every counter only grows
 * from one scrape to the next, but two series are not read at one instant.
 * (ThreadSanitizer reports these plain stores against the relaxed loads as
 * races: on the 64-bit targets nfqlua builds for, an aligned 8-byte store
 * is never seen torn, and that is all a scrape needs.)
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nfq_core.h"
#include "nfq_metrics.h"

#define NAME_MAX_LEN 128
#define LABEL_VALUE_MAX_LEN 1024
/* Names the daemon's own metrics use: scripts may not take them. */
#define RESERVED_PREFIX "nfqlua_"

struct family {
	char name[NAME_MAX_LEN + 1];	/* a counter's without _total */
	char *help;
	int kind;
	int n_labels;
	char labels[NFQ_METRIC_MAX_LABELS][NAME_MAX_LEN + 1];
	int first, last;		/* its series, linked by next; -1: none */
};

struct series {
	int family;
	int next;
	char *labels;			/* name="value",... as written, escaped */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct family families[NFQ_METRIC_MAX_FAMILIES];	/* under lock */
static int n_families;
static struct series series[NFQ_METRIC_MAX_SERIES];	/* under lock */
static int n_series;
/* A worker's cells, indexed by series, made at its first series (under lock). */
static double *columns[NFQ_METRIC_MAX_WORKERS];

static __thread unsigned worker_index;

void nfq_metrics_set_worker(unsigned index)
{
	worker_index = index;
}

void nfq_metrics_printf(struct nfq_metrics_text *t, const char *fmt, ...)
{
	if (t->failed)
		return;
	for (;;) {
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? t->cap - t->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			t->failed = 1;
			return;
		}
		if (t->buf && t->len + (size_t)n < t->cap) {
			t->len += (size_t)n;
			return;
		}
		size_t cap = t->cap ? t->cap : 4096;
		while (cap <= t->len + (size_t)n)
			cap *= 2;
		char *buf = realloc(t->buf, cap);
		if (!buf) {
			t->failed = 1;
			return;
		}
		t->buf = buf;
		t->cap = cap;
	}
}

/* s with \ and newlines escaped, and " too when quote is set. */
static void escaped(struct nfq_metrics_text *t, const char *s, int quote)
{
	for (const char *run = s;; s++) {
		if (*s && *s != '\\' && *s != '\n' && !(quote && *s == '"'))
			continue;
		nfq_metrics_printf(t, "%.*s", (int)(s - run), run);
		if (!*s)
			return;
		nfq_metrics_printf(t, "\\%c", *s == '\n' ? 'n' : *s);
		run = s + 1;
	}
}

void nfq_metrics_label_value(struct nfq_metrics_text *t, const char *v)
{
	nfq_metrics_printf(t, "\"");
	escaped(t, v, 1);
	nfq_metrics_printf(t, "\"");
}

void nfq_metrics_header(struct nfq_metrics_text *t, int format, const char *name, int kind, const char *help)
{
	/* The text format names a counter's family as its samples; OpenMetrics without _total. */
	const char *suffix = kind == NFQ_METRIC_COUNTER && format == NFQ_METRICS_TEXT ? "_total" : "";
	if (help && *help) {
		nfq_metrics_printf(t, "# HELP %s%s ", name, suffix);
		escaped(t, help, format == NFQ_METRICS_OPENMETRICS);
		nfq_metrics_printf(t, "\n");
	}
	nfq_metrics_printf(t, "# TYPE %s%s %s\n", name, suffix, kind == NFQ_METRIC_COUNTER ? "counter" : "gauge");
}

void nfq_metrics_value(struct nfq_metrics_text *t, double v)
{
	if (isnan(v)) {
		nfq_metrics_printf(t, "NaN");
	} else if (isinf(v)) {
		nfq_metrics_printf(t, v > 0 ? "+Inf" : "-Inf");
	} else {
		/* The shortest of the two that reads back as v. */
		char s[32];
		snprintf(s, sizeof s, "%.15g", v);
		if (strtod(s, NULL) != v)
			snprintf(s, sizeof s, "%.17g", v);
		nfq_metrics_printf(t, "%s", s);
	}
}

static int valid_name(const char *s, int colons)
{
	if (!*s || (*s >= '0' && *s <= '9'))
		return 0;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
		      *s == '_' || (colons && *s == ':')))
			return 0;
	return 1;
}

static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n >= k && strcmp(s + n - k, suffix) == 0;
}

static const char *kind_name(int kind)
{
	return kind == NFQ_METRIC_COUNTER ? "counter" : "gauge";
}

/* "{a, b}": a family's label names, for messages. */
static void describe_labels(char *out, size_t len, const char (*labels)[NAME_MAX_LEN + 1], int n)
{
	size_t used = (size_t)snprintf(out, len, "{");
	for (int i = 0; i < n && used < len; i++)
		used += (size_t)snprintf(out + used, len - used, "%s%s", i ? ", " : "", labels[i]);
	if (used < len)
		snprintf(out + used, len - used, "}");
}

static int check_labels(const char *const *labels, int n_labels, char *err, size_t errlen)
{
	if (n_labels < 0 || n_labels > NFQ_METRIC_MAX_LABELS) {
		snprintf(err, errlen, "a metric has at most %d labels, got %d", NFQ_METRIC_MAX_LABELS, n_labels);
		return -1;
	}
	for (int i = 0; i < n_labels; i++) {
		const char *l = labels[i];
		if (!l || strlen(l) > NAME_MAX_LEN || !valid_name(l, 0) || strncmp(l, "__", 2) == 0) {
			snprintf(err, errlen, "label name '%.*s' is not valid: use letters, digits and _, not starting with a digit or __",
				 NAME_MAX_LEN, l ? l : "");
			return -1;
		}
		for (int j = 0; j < i; j++)
			if (strcmp(labels[j], l) == 0) {
				snprintf(err, errlen, "label name '%s' is given twice", l);
				return -1;
			}
	}
	return 0;
}

static int add_series(int f, const char *labels_text);

int nfq_metric_declare(int kind, const char *name, const char *help, const char *const *labels,
		       int n_labels, char *err, size_t errlen)
{
	if (kind != NFQ_METRIC_COUNTER && kind != NFQ_METRIC_GAUGE) {
		snprintf(err, errlen, "unknown metric kind %d", kind);
		return -1;
	}
	if (!name || strlen(name) > NAME_MAX_LEN || !valid_name(name, 1)) {
		snprintf(err, errlen, "metric name '%.*s' is not valid: use letters, digits, _ and :, not starting with a digit",
			 NAME_MAX_LEN, name ? name : "");
		return -1;
	}
	if (strncmp(name, RESERVED_PREFIX, strlen(RESERVED_PREFIX)) == 0) {
		snprintf(err, errlen, "metric name '%s': names starting with %s are the daemon's own; use another prefix",
			 name, RESERVED_PREFIX);
		return -1;
	}
	if (kind == NFQ_METRIC_GAUGE && ends_with(name, "_total")) {
		snprintf(err, errlen, "gauge '%s': the _total suffix is for counters; name the gauge without it", name);
		return -1;
	}
	char base[NAME_MAX_LEN + 1];
	snprintf(base, sizeof base, "%s", name);
	if (kind == NFQ_METRIC_COUNTER && ends_with(base, "_total"))
		base[strlen(base) - strlen("_total")] = '\0';
	if (!*base) {
		snprintf(err, errlen, "counter '%s' needs a name before _total", name);
		return -1;
	}
	if (check_labels(labels, n_labels, err, errlen) < 0)
		return -1;
	char *help_copy = strdup(help ? help : "");
	if (!help_copy) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}

	pthread_mutex_lock(&lock);
	int found = -1;
	for (int i = 0; i < n_families && found < 0; i++)
		if (strcmp(families[i].name, base) == 0)
			found = i;
	if (found >= 0) {
		struct family *fam = &families[found];
		int same = fam->kind == kind && fam->n_labels == n_labels;
		for (int i = 0; same && i < n_labels; i++)
			same = strcmp(fam->labels[i], labels[i]) == 0;
		if (!same) {
			char was[NFQ_METRIC_MAX_LABELS * (NAME_MAX_LEN + 2) + 3];
			describe_labels(was, sizeof was, fam->labels, fam->n_labels);
			snprintf(err, errlen, "metric '%s' is already declared as a %s with labels %s: declare it the same way, or use another name",
				 name, kind_name(fam->kind), was);
			pthread_mutex_unlock(&lock);
			free(help_copy);
			return -1;
		}
		/* A reload may say it better. */
		free(fam->help);
		fam->help = help_copy;
		pthread_mutex_unlock(&lock);
		return found;
	}
	if (n_families == NFQ_METRIC_MAX_FAMILIES) {
		pthread_mutex_unlock(&lock);
		free(help_copy);
		snprintf(err, errlen, "metric '%s': there are already %d metrics, the most a process keeps", name,
			 NFQ_METRIC_MAX_FAMILIES);
		return -1;
	}
	struct family *fam = &families[n_families];
	snprintf(fam->name, sizeof fam->name, "%s", base);
	fam->help = help_copy;
	fam->kind = kind;
	fam->n_labels = n_labels;
	for (int i = 0; i < n_labels; i++)
		snprintf(fam->labels[i], sizeof fam->labels[i], "%s", labels[i]);
	fam->first = fam->last = -1;
	int index = n_families++;
	/* Without labels, the one series exists from the start: it shows 0 until counted. */
	if (n_labels == 0 && add_series(index, "") < 0) {
		n_families--;
		free(help_copy);
		pthread_mutex_unlock(&lock);
		snprintf(err, errlen, "metric '%s': out of memory", name);
		return -1;
	}
	pthread_mutex_unlock(&lock);
	return index;
}

/* With lock held: a new series of family f, or -1. */
static int add_series(int f, const char *labels_text)
{
	if (n_series == NFQ_METRIC_MAX_SERIES)
		return -1;
	char *copy = strdup(labels_text);
	if (!copy)
		return -1;
	int s = n_series++;
	series[s] = (struct series){ .family = f, .next = -1, .labels = copy };
	struct family *fam = &families[f];
	if (fam->last >= 0)
		series[fam->last].next = s;
	else
		fam->first = s;
	fam->last = s;
	return s;
}

double *nfq_metric_series(int family, const char *const *values, int n_values, char *err, size_t errlen)
{
	unsigned w = worker_index;
	if (w >= NFQ_METRIC_MAX_WORKERS) {
		snprintf(err, errlen, "worker %u has no metric cells (at most %d workers)", w, NFQ_METRIC_MAX_WORKERS);
		return NULL;
	}
	pthread_mutex_lock(&lock);
	if (family < 0 || family >= n_families) {
		pthread_mutex_unlock(&lock);
		snprintf(err, errlen, "no metric %d", family);
		return NULL;
	}
	const struct family *fam = &families[family];
	if (n_values != fam->n_labels) {
		char names[NFQ_METRIC_MAX_LABELS * (NAME_MAX_LEN + 2) + 3];
		describe_labels(names, sizeof names, fam->labels, fam->n_labels);
		snprintf(err, errlen, "metric '%s' has labels %s: give %d label value%s, got %d", fam->name, names,
			 fam->n_labels, fam->n_labels == 1 ? "" : "s", n_values);
		pthread_mutex_unlock(&lock);
		return NULL;
	}
	struct nfq_metrics_text key = { 0 };
	for (int i = 0; i < n_values; i++) {
		if (strlen(values[i]) > LABEL_VALUE_MAX_LEN) {
			snprintf(err, errlen, "metric '%s': label %s's value is longer than %d bytes", fam->name,
				 fam->labels[i], LABEL_VALUE_MAX_LEN);
			pthread_mutex_unlock(&lock);
			free(key.buf);
			return NULL;
		}
		nfq_metrics_printf(&key, "%s%s=", i ? "," : "", fam->labels[i]);
		nfq_metrics_label_value(&key, values[i]);
	}
	nfq_metrics_printf(&key, "%s", "");
	int s = -1;
	for (int i = fam->first; !key.failed && i >= 0 && s < 0; i = series[i].next)
		if (strcmp(series[i].labels, key.buf) == 0)
			s = i;
	if (s < 0 && !key.failed)
		s = add_series(family, key.buf);
	if (s >= 0 && !columns[w]) {
		columns[w] = aligned_alloc(64, NFQ_METRIC_MAX_SERIES * sizeof(double));
		if (columns[w])
			memset(columns[w], 0, NFQ_METRIC_MAX_SERIES * sizeof(double));
	}
	double *cell = s >= 0 && columns[w] ? &columns[w][s] : NULL;
	if (!cell) {
		if (n_series == NFQ_METRIC_MAX_SERIES && !key.failed)
			snprintf(err, errlen, "metric '%s': there are already %d series, the most a process keeps (a label with too many values?)",
				 fam->name, NFQ_METRIC_MAX_SERIES);
		else
			snprintf(err, errlen, "metric '%s': out of memory", fam->name);
	}
	pthread_mutex_unlock(&lock);
	free(key.buf);
	return cell;
}

/* With lock held: a series' value, summed over the workers. */
static double series_value(int s)
{
	double sum = 0;
	for (int w = 0; w < NFQ_METRIC_MAX_WORKERS; w++) {
		if (!columns[w])
			continue;
		double v;
		__atomic_load(&columns[w][s], &v, __ATOMIC_RELAXED);
		sum += v;
	}
	return sum;
}

void nfq_metrics_write_registry(struct nfq_metrics_text *t, int format)
{
	nfq_metrics_header(t, format, "nfqlua_build_info", NFQ_METRIC_GAUGE, "The nfqlua version, as a label.");
	nfq_metrics_printf(t, "nfqlua_build_info{version=");
	nfq_metrics_label_value(t, nfq_version());
	nfq_metrics_printf(t, "} 1\n");
	pthread_mutex_lock(&lock);
	for (int f = 0; f < n_families; f++) {
		const struct family *fam = &families[f];
		nfq_metrics_header(t, format, fam->name, fam->kind, fam->help);
		const char *suffix = fam->kind == NFQ_METRIC_COUNTER ? "_total" : "";
		for (int s = fam->first; s >= 0; s = series[s].next) {
			if (*series[s].labels)
				nfq_metrics_printf(t, "%s%s{%s} ", fam->name, suffix, series[s].labels);
			else
				nfq_metrics_printf(t, "%s%s ", fam->name, suffix);
			nfq_metrics_value(t, series_value(s));
			nfq_metrics_printf(t, "\n");
		}
	}
	pthread_mutex_unlock(&lock);
}

char *nfq_metrics_finish(struct nfq_metrics_text *t, int format, size_t *len)
{
	if (format == NFQ_METRICS_OPENMETRICS)
		nfq_metrics_printf(t, "# EOF\n");
	nfq_metrics_printf(t, "%s", "");
	if (t->failed) {
		free(t->buf);
		return NULL;
	}
	*len = t->len;
	return t->buf;
}

char *nfq_metrics_render(int format, size_t *len)
{
	struct nfq_metrics_text t = { 0 };
	nfq_metrics_write_registry(&t, format);
	return nfq_metrics_finish(&t, format, len);
}

void nfq_metrics_free(char *text)
{
	free(text);
}

/*
 * nfq_domainset.c: sets of domain names (nfq.domainset). An entry covers
 * its name and every name under it (example.com: a.b.example.com too), or
 * only its name when written =name. Names are stored lowercased, without a
 * trailing dot; bytes outside ASCII (UTF-8, or punycode's xn-- labels,
 * which are ASCII) are compared as they are.
 *
 * The hash of a name is FNV-1a over its bytes taken right to left, so the
 * hashes of all its suffixes come out of one pass over the name: a query
 * probes the table once at each label boundary, longest match kept, with
 * no allocation and no copy of the name.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "nfq_set_common.h"

#define FNV_BASIS 2166136261u
#define FNV_PRIME 16777619u
#define NAME_MAX_LEN 253
#define LABEL_MAX_LEN 63
/* Per entry in the arena: its length, its flags, its index, then the name.
 * The slots point at the entry, not at its index: a hit reads the arena only. */
#define ENTRY_HEAD NFQ_DOMAIN_ENTRY_HEAD

static inline uint8_t lower(uint8_t c)
{
	return (uint8_t)(c - 'A') < 26 ? c | 0x20 : c;
}

static int name_byte(uint8_t c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c >= 0x80;
}

/* Names in hosts files that are the machine's own, not entries of a blocklist. */
static const char *const local_names[] = {
	"localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost", "ip6-loopback",
	"ip6-localnet", "ip6-mcastprefix", "ip6-allnodes", "ip6-allrouters", "ip6-allhosts", "0.0.0.0",
};

static int local_name(const char *p, size_t n)
{
	for (size_t i = 0; i < sizeof local_names / sizeof local_names[0]; i++)
		if (strlen(local_names[i]) == n && strncasecmp(local_names[i], p, n) == 0)
			return 1;
	return 0;
}

struct nfq_domainset *nfq_domainset_new(void)
{
	struct nfq_domainset *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->slots = nfq_set_alloc(NFQ_SET_FIRST_SLOTS * sizeof *s->slots);
	if (!s->slots) {
		free(s);
		return NULL;
	}
	s->mask = NFQ_SET_FIRST_SLOTS - 1;
	return s;
}

void nfq_domainset_free(struct nfq_domainset *s)
{
	if (!s)
		return;
	nfq_set_free(s->slots, ((size_t)s->mask + 1) * sizeof *s->slots);
	nfq_set_free(s->offsets, (size_t)s->offsets_cap * sizeof *s->offsets);
	nfq_set_free(s->arena, s->arena_cap);
	free(s);
}

/* The name p[0..n) lowercased into out, without one trailing dot: its length, or 0 if it is not a name. */
static size_t normalize(const char *p, size_t n, uint8_t *out)
{
	if (n && p[n - 1] == '.')
		n--;
	if (n == 0 || n > NAME_MAX_LEN)
		return 0;
	size_t label = 0;
	for (size_t i = 0; i < n; i++) {
		uint8_t c = lower((uint8_t)p[i]);
		if (c == '.') {
			if (label == 0)
				return 0;
			label = 0;
		} else if (!name_byte(c) || ++label > LABEL_MAX_LEN) {
			return 0;
		}
		out[i] = c;
	}
	return label ? n : 0;
}

static uint32_t name_hash(const uint8_t *p, size_t n)
{
	uint32_t h = FNV_BASIS;
	while (n--)
		h = (h ^ p[n]) * FNV_PRIME;
	return nfq_set_mix(h);
}

static inline uint32_t entry_index(const uint8_t *e)
{
	uint32_t index;
	memcpy(&index, e + 2, sizeof index);
	return index;
}

/* The entry whose name is q[0..n) in any case, with hash h; NULL if none. */
static inline const uint8_t *lookup(const struct nfq_domainset *s, uint32_t h, const uint8_t *q, size_t n)
{
	for (uint32_t i = h & s->mask;; i = (i + 1) & s->mask) {
		const struct nfq_set_slot *slot = &s->slots[i];
		if (!slot->ref)
			return NULL;
		if (slot->hash != h)
			continue;
		const uint8_t *e = s->arena + slot->ref - 1;
		if (e[0] != n)
			continue;
		size_t k = 0;
		while (k < n && e[ENTRY_HEAD + k] == lower(q[k]))
			k++;
		if (k == n)
			return e;
	}
}

/* Add the normalized name[0..n): 0, or -1 and errno ENOMEM. */
static int add_name(struct nfq_domainset *s, const uint8_t *name, size_t n, uint8_t flags)
{
	if (nfq_set_reserve(&s->slots, &s->mask, (uint64_t)s->nentries + 1) != 0)
		return -1;
	uint32_t h = name_hash(name, n);
	const uint8_t *found = lookup(s, h, name, n);
	if (found) {
		/* Listed both ways: the whole domain is meant. */
		s->arena[found - s->arena + 1] &= flags;
		s->report.duplicates++;
		return 0;
	}
	if ((uint64_t)s->arena_len + ENTRY_HEAD + n >= UINT32_MAX) {
		errno = ENOMEM;
		return -1;
	}
	if (nfq_set_grow((void **)&s->offsets, &s->offsets_cap, s->nentries + 1, sizeof *s->offsets) != 0 ||
	    nfq_set_grow((void **)&s->arena, &s->arena_cap, s->arena_len + ENTRY_HEAD + (uint32_t)n, 1) != 0)
		return -1;
	uint8_t *e = s->arena + s->arena_len;
	uint32_t index = s->nentries + 1;
	e[0] = (uint8_t)n;
	e[1] = flags;
	memcpy(e + 2, &index, sizeof index);
	memcpy(e + ENTRY_HEAD, name, n);
	s->offsets[s->nentries] = s->arena_len;
	uint32_t i = h & s->mask;
	while (s->slots[i].ref)
		i = (i + 1) & s->mask;
	s->slots[i] = (struct nfq_set_slot){ h, s->arena_len + 1 };
	s->arena_len += ENTRY_HEAD + (uint32_t)n;
	s->nentries = index;
	s->report.added++;
	return 0;
}

/* The name p[0..n) with flags: 1 if added, 0 if it is not a name, -1 on ENOMEM. */
static int add_text_name(struct nfq_domainset *s, const char *p, size_t n, uint8_t flags)
{
	uint8_t name[NAME_MAX_LEN + 1];
	size_t len = normalize(p, n, name);
	if (!len)
		return 0;
	return add_name(s, name, len, flags) == 0 ? 1 : -1;
}

/* One name as a list writes it: name, or =name for that name only. */
static int add_token(struct nfq_domainset *s, const char *p, size_t n)
{
	if (n && p[0] == '=')
		return add_text_name(s, p + 1, n - 1, NFQ_DOMAIN_EXACT);
	return add_text_name(s, p, n, 0);
}

/*
 * A dnsmasq line that blocks: address=/a.example/b.example/0.0.0.0 (any
 * answer, or none), or server=/a.example/ and local=/a.example/ with no
 * server (answered locally: NXDOMAIN). The names between the slashes, each
 * with the names under it, as dnsmasq means them. 1 if added, 0 if it is
 * not such a line (a server= line that forwards is not), -1 on ENOMEM.
 */
static int add_dnsmasq_names(struct nfq_domainset *s, const char *p, size_t n)
{
	static const char *const keys[] = { "address=/", "server=/", "local=/" };
	size_t k = 0;
	while (k < sizeof keys / sizeof keys[0] && (n <= strlen(keys[k]) || memcmp(p, keys[k], strlen(keys[k])) != 0))
		k++;
	if (k == sizeof keys / sizeof keys[0])
		return 0;
	const char *first = p + strlen(keys[k]), *end = p + n, *last = end;
	while (last > first && last[-1] != '/')
		last--;
	int forwards = k > 0 && last != end;
	if (last == first || forwards)
		return 0;
	for (const char *name = first; name < last;) {
		const char *slash = memchr(name, '/', (size_t)(last - name));
		int rc = add_text_name(s, name, (size_t)(slash - name), 0);
		if (rc <= 0)
			return rc;
		name = slash + 1;
	}
	return 1;
}

/* The names after the address of a hosts-file line. */
static int add_hosts_names(struct nfq_domainset *s, struct nfq_set_span rest, const char *line, size_t n)
{
	int added = 0, bad = 0, local = 0;
	for (struct nfq_set_span t = nfq_set_token(&rest); t.n; t = nfq_set_token(&rest)) {
		if (local_name(t.p, t.n)) {
			local = 1;
			continue;
		}
		int rc = add_token(s, t.p, t.n);
		if (rc < 0)
			return -1;
		added |= rc;
		bad |= !rc;
	}
	if (bad || (!added && !local))
		nfq_set_report_bad(&s->report, line, n);
	else if (!added)
		s->report.skipped++;
	return 0;
}

static int add_line(void *set, const char *line, size_t n)
{
	struct nfq_domainset *s = set;
	struct nfq_set_span rest = nfq_set_trim(line, n);
	/* # comments; ! and [Adblock Plus 2.0] are adblock lists' comments and header. */
	if (rest.n == 0 || rest.p[0] == '#' || rest.p[0] == '!' || rest.p[0] == '[') {
		s->report.skipped++;
		return 0;
	}
	/* A comment after a name or a hosts line; a # inside a token (an adblock ## rule) stays and makes it bad. */
	for (size_t i = 1; i < rest.n; i++) {
		if (rest.p[i] == '#' && nfq_set_space((unsigned char)rest.p[i - 1])) {
			rest.n = i;
			break;
		}
	}
	struct nfq_set_span first = nfq_set_token(&rest);
	uint8_t addr[16];
	if (nfq_set_address(first.p, first.n, addr))
		return add_hosts_names(s, rest, line, n);
	int rc = 0;
	if (nfq_set_token(&rest).n == 0) {
		if (first.n > 3 && first.p[0] == '|' && first.p[1] == '|' && first.p[first.n - 1] == '^')
			rc = add_text_name(s, first.p + 2, first.n - 3, 0);
		else if (memchr(first.p, '/', first.n))
			rc = add_dnsmasq_names(s, first.p, first.n);
		else
			rc = add_token(s, first.p, first.n);
	}
	if (rc < 0)
		return -1;
	if (rc == 0)
		nfq_set_report_bad(&s->report, line, n);
	return 0;
}

int nfq_domainset_add_text(struct nfq_domainset *s, const char *text, size_t len)
{
	/* Room for a name a line up front: the table is not doubled and the arrays not copied while loading. */
	uint64_t want = s->nentries + nfq_set_count_lines(text, len);
	uint64_t bytes = s->arena_len + len + (uint64_t)ENTRY_HEAD * want;
	if (want <= UINT32_MAX && bytes <= UINT32_MAX &&
	    (nfq_set_reserve(&s->slots, &s->mask, want) != 0 ||
	     nfq_set_grow((void **)&s->offsets, &s->offsets_cap, (uint32_t)want, sizeof *s->offsets) != 0 ||
	     nfq_set_grow((void **)&s->arena, &s->arena_cap, (uint32_t)bytes, 1) != 0))
		return -1;
	return nfq_set_each_line(text, len, &s->report, add_line, s);
}

int nfq_domainset_add_item(struct nfq_domainset *s, const char *item, size_t len)
{
	s->report.lines++;
	return add_line(s, item, len);
}

/* nfq_domainset_add_text for nfq_set_add_file. */
static int add_text(void *set, const char *text, size_t len)
{
	return nfq_domainset_add_text(set, text, len);
}

int nfq_domainset_add_file(struct nfq_domainset *s, const char *path)
{
	return nfq_set_add_file(path, add_text, s);
}

void nfq_domainset_trim(struct nfq_domainset *s)
{
	nfq_set_shrink(&s->slots, &s->mask, s->nentries);
	nfq_set_fit((void **)&s->offsets, &s->offsets_cap, s->nentries, sizeof *s->offsets);
	nfq_set_fit((void **)&s->arena, &s->arena_cap, s->arena_len, 1);
}

uint32_t nfq_domainset_match(const struct nfq_domainset *s, const uint8_t *name, size_t len)
{
	if (len && name[len - 1] == '.')
		len--;
	uint32_t h = FNV_BASIS, best = 0;
	for (size_t i = len; i-- > 0;) {
		h = (h ^ lower(name[i])) * FNV_PRIME;
		if (i && name[i - 1] != '.')
			continue;
		if (len - i > NAME_MAX_LEN)
			break;
		const uint8_t *found = lookup(s, nfq_set_mix(h), name + i, len - i);
		if (found && (i == 0 || !(found[1] & NFQ_DOMAIN_EXACT)))
			best = entry_index(found);
	}
	return best;
}

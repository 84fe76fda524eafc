# nfqlua: build, test and demo. `make test` and `make demo` install what they
# need with apt-get first (as root, on Debian).

CC ?= cc
LUAJIT ?= luajit
BUSTED ?= busted
PKG_CONFIG ?= pkg-config

# Debian packages: what building and running nfqlua needs (make demo, bench,
# soak), what the tests add (make test), what fuzzing adds (make fuzz).
BUILD_PACKAGES = build-essential pkg-config libnetfilter-queue-dev libnfnetlink-dev \
	libmnl-dev libluajit2-5.1-dev luajit2 libev-dev libpcap-dev libssl-dev libmicrohttpd-dev iptables iproute2
TEST_PACKAGES = lua-busted lua-check tcpdump tshark valgrind lua-luv lua-cqueues luarocks \
	nginx libnginx-mod-http-lua dnsmasq bind9-dnsutils prometheus curl
# make deb (and spec/41, which runs it).
DEB_PACKAGES = debhelper dpkg-dev lintian
FUZZ_PACKAGES = clang
# libcrypto: HKDF and AES for QUIC Initial packets (src/nfq_quic.c).
CORE_PKGS = libnetfilter_queue libmnl libcrypto
LUA_PKG = luajit

# The release, written once in the file VERSION: nfq_version() in the C core,
# nfqlua --version and the Lua module's _VERSION (through the generated
# lua/nfq/cdef.lua) all come from it.
VERSION := $(shell cat VERSION)

CFLAGS ?= -O2 -g
# Symbols are hidden unless a header exports them: the FFI entry points
# (nfq_core.h) and the engine's API (nfq_engine.h) are declared under
# `#pragma GCC visibility push(default)`.
override CFLAGS += -std=gnu11 -Wall -Wextra -Wshadow -fPIC -fvisibility=hidden
# Every object also writes the headers it read to a .d file beside it
# (included at the end), so that editing a header rebuilds what includes it;
# objects depend on this Makefile too, for its flags.
DEPFLAGS = -MMD -MP
# Resolved lazily so that `make deps` can install pkg-config data first.
CORE_CFLAGS = $(shell $(PKG_CONFIG) --cflags $(CORE_PKGS))
CORE_LIBS = $(shell $(PKG_CONFIG) --libs $(CORE_PKGS))
LUA_CFLAGS = $(shell $(PKG_CONFIG) --cflags $(LUA_PKG))
LUA_LIBS = $(shell $(PKG_CONFIG) --libs $(LUA_PKG))
PCAP_LIBS = $(shell $(PKG_CONFIG) --libs libpcap)
# The daemon's --metrics HTTP server.
MHD_LIBS = $(shell $(PKG_CONFIG) --libs libmicrohttpd)
# Debian's libev ships no pkg-config file.
EV_LIBS = $(shell $(PKG_CONFIG) --libs libev 2>/dev/null || echo -lev)

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
MANDIR ?= $(PREFIX)/share/man
DOCDIR ?= $(PREFIX)/share/doc/nfqlua
LUA_MODULE_DIR ?= $(PREFIX)/share/lua/5.1
LUA_CMODULE_DIR ?= $(PREFIX)/lib/lua/5.1
SYSTEMD_DIR ?= $(PREFIX)/lib/systemd/system
# The Lua modules, installed under LUA_MODULE_DIR. All but nfq.testing (for
# busted specs of scripts) are also compiled into nfqlua and libnfqlua.
LUA_FILES = nfq.lua nfq/cdef.lua nfq/engine.lua nfq/headers.lua nfq/offline.lua nfq/testing.lua \
	nfq/flows.lua nfq/names.lua nfq/sets.lua nfq/pcap.lua nfq/metric.lua nfq/geneva.lua
LUA_EMBEDDED = $(filter-out nfq/testing.lua,$(LUA_FILES))
EXAMPLES = $(wildcard scripts/examples/*.lua) scripts/examples/blocklist.txt scripts/examples/geneva.strategy \
	scripts/examples/embed.c \
	$(wildcard scripts/examples/openresty/*)

BUILD = build
CORE_SRC = src/nfq_queue.c src/nfq_packet.c src/nfq_headers.c src/nfq_send.c src/nfq_reject.c \
	src/nfq_buffer.c src/nfq_build.c src/nfq_version.c src/nfq_flows.c \
	src/nfq_names.c src/nfq_dns.c src/nfq_tls.c src/nfq_quic.c src/nfq_http.c \
	src/nfq_set_common.c src/nfq_domainset.c src/nfq_ipset.c src/nfq_pcap.c src/nfq_metrics.c \
	src/nfq_geneva.c
ENGINE_SRC = src/nfq_engine.c
# The daemon: main() and flags, its workers, its log, --replay.
DAEMON_SRC = src/nfq_daemon.c src/nfq_workers.c src/nfq_log.c src/nfq_replay.c src/nfq_metrics_server.c
CORE_OBJ = $(CORE_SRC:src/%.c=$(BUILD)/%.o)
ENGINE_OBJ = $(ENGINE_SRC:src/%.c=$(BUILD)/%.o)
# Module bytecode linked into the binary: require finds luaJIT_BC_<name>.
LUA_BC_OBJ = $(LUA_EMBEDDED:%.lua=$(BUILD)/bc/%.o)

SPEC_ENV = NFQ_ROOT=$(CURDIR) LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' LUA_CPATH='lua/?.so;;'

FUZZ_CC ?= clang
FUZZ_SECONDS ?= 600
FUZZ_FLAGS = -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fvisibility=hidden
FUZZ_TARGETS = packet headers reject build flows dns dns_reply tls quic http sets

.PHONY: all lib asan tsan deps deps-build deps-fuzz deps-deb deb lint test unit demo bench bench-scale bench-send bench-sets soak install uninstall clean fuzz fuzz-geneva fuzz-merge fuzz-replay fuzz-replay-build

all: nfqlua lua/nfq/core.so lib

# libnfqlua: the engine for C hosts (nfq_engine.h). A host linked statically must
# export the library's symbols (-Wl,-E) so that the Lua module finds them.
lib: $(BUILD)/libnfqlua.a $(BUILD)/libnfqlua.so

# Made afresh: ar would keep members that a rename left behind.
$(BUILD)/libnfqlua.a: $(CORE_OBJ) $(ENGINE_OBJ) $(LUA_BC_OBJ)
	rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/libnfqlua.so: $(CORE_OBJ) $(ENGINE_OBJ) $(LUA_BC_OBJ)
	$(CC) $(LDFLAGS) -shared -o $@ $^ $(CORE_LIBS) $(LUA_LIBS) $(EV_LIBS) -lpthread

# install_missing PACKAGES: apt-get install those not installed yet. Debian's
# nginx package starts a web server on port 80 when installed: a policy-rc.d
# (Debian's switch for this) holds every service back meanwhile.
define install_missing
	@missing=""; for p in $(1); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		held=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && held=1; \
		fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		rc=$$?; [ -z "$$held" ] || rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi
endef

deps-build:
	$(call install_missing,$(BUILD_PACKAGES))
deps:
	$(call install_missing,$(BUILD_PACKAGES) $(TEST_PACKAGES) $(DEB_PACKAGES))
deps-deb:
	$(call install_missing,$(BUILD_PACKAGES) $(DEB_PACKAGES))
deps-fuzz:
	$(call install_missing,$(BUILD_PACKAGES) $(FUZZ_PACKAGES))

# The headers whose BEGIN CDEF ... END CDEF blocks the FFI sees, in this order.
CDEF_HEADERS = src/nfq_core.h src/nfq_flows.h src/nfq_names.h src/nfq_sets.h src/nfq_pcap.h src/nfq_metrics.h \
	src/nfq_geneva.h

# VERSION is the version of the Lua modules too: nfq.lua checks the core's
# nfq_version() against it.
lua/nfq/cdef.lua: $(CDEF_HEADERS) VERSION
	@mkdir -p $(@D)
	{ echo '-- Generated from $(CDEF_HEADERS) and VERSION by make: do not edit.'; \
	  echo 'local ffi = require "ffi"'; \
	  echo 'local cdef = { VERSION = "$(VERSION)" }'; \
	  echo 'if pcall(ffi.typeof, "struct nfq_packet") then return cdef end'; \
	  echo 'ffi.cdef [['; \
	  for h in $(CDEF_HEADERS); do sed -n '/BEGIN CDEF/,/END CDEF/p' $$h | grep -v 'CDEF'; done; \
	  echo ']]'; echo 'return cdef'; } > $@

$(BUILD)/%.o: src/%.c Makefile
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(DEPFLAGS) $(CORE_CFLAGS) $(LUA_CFLAGS) -c -o $@ $<

# The core's version, in every build of it (plain, sanitizers, fuzzing).
VERSION_OBJ = $(BUILD)/nfq_version.o $(BUILD)/asan/nfq_version.o $(BUILD)/tsan/nfq_version.o \
	$(BUILD)/fuzz/nfq_version.o
$(VERSION_OBJ): VERSION
$(VERSION_OBJ): CPPFLAGS += -DNFQ_VERSION='"$(VERSION)"'

# lua/nfq/cdef.lua becomes build/bc/nfq/cdef.o, module nfq.cdef.
$(BUILD)/bc/%.o: lua/%.lua
	@mkdir -p $(@D)
	$(LUAJIT) -b -n $(subst /,.,$*) $< $@

lua/nfq/core.so: $(CORE_OBJ)
	$(CC) $(LDFLAGS) -shared -o $@ $^ $(CORE_LIBS) -lpthread

# -Wl,-E exports the core's functions, so the module's FFI finds them in ffi.C.
nfqlua: $(CORE_OBJ) $(ENGINE_OBJ) $(DAEMON_SRC:src/%.c=$(BUILD)/%.o) $(LUA_BC_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ -Wl,-E $(CORE_LIBS) $(LUA_LIBS) $(EV_LIBS) $(PCAP_LIBS) $(MHD_LIBS) -lpthread -ldl -lm

# Static checks of the Lua code (settings in .luacheckrc).
lint:
	@luacheck -q --no-color lua scripts spec bench || { echo "make lint: luacheck found problems (see above)" >&2; exit 1; }

# The daemon and replay specs run the sanitizer build; any report fails them.
test: deps
	$(MAKE) lint
	$(MAKE) all asan tsan fuzz-replay-build
	$(SPEC_ENV) NFQLUA=$(CURDIR)/$(BUILD)/asan/nfqlua NFQLUA_TSAN=$(CURDIR)/$(BUILD)/tsan/nfqlua \
		ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=99 UBSAN_OPTIONS=print_stacktrace=1 \
		$(BUSTED) --lua=$(LUAJIT) -o spec/helpers/summary.lua spec

unit: all fuzz-replay-build
	$(SPEC_ENV) $(BUSTED) --lua=$(LUAJIT) --exclude-tags=kernel spec

demo: deps-build
	$(MAKE) all
	./scripts/demo.sh

# Figures, not assertions: writes bench/RESULTS.md (about 4 minutes, as root),
# nfq.send's and TCP throughput's sections included.
bench: deps-build
	$(MAKE) all
	bench/run.sh
	bench/send.sh
	bench/throughput.sh
	$(MAKE) bench-sets

# nfq.domainset and nfq.ipset: load time, memory, lookups/s against C and a
# Lua table (bench/sets.lua, about a minute): its section of bench/RESULTS.md.
bench-sets: deps-build
	$(MAKE) all
	$(MAKE) -C bench sets_baseline.so
	$(SPEC_ENV) $(LUAJIT) bench/sets.lua

# nfq.send against a C raw-socket sender: its section of bench/RESULTS.md.
bench-send: deps-build
	$(MAKE) all
	bench/send.sh

# nfqlua --queue 0-1 against one queue, two senders: its section of bench/RESULTS.md.
bench-scale: deps-build
	$(MAKE) all
	bench/scale.sh

# 10 minutes under load with reloads, reordering and script errors; writes
# its figures to bench/RESULTS.md (SOAK_SECONDS to change the length).
soak: deps-build
	$(MAKE) all
	bench/soak.sh

# The daemon built with sanitizers: build/asan/nfqlua (AddressSanitizer and
# UBSan), on which make test runs every daemon spec, and build/tsan/nfqlua
# (ThreadSanitizer), on which it runs reloads and watchdog timeouts of
# several workers (spec/29-script_guard_spec.lua).
ASAN_FLAGS = -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
TSAN_FLAGS = -g -O1 -fsanitize=thread
DAEMON_ALL_SRC = $(CORE_SRC) $(ENGINE_SRC) $(DAEMON_SRC)

# sanitized_daemon NAME, FLAGS: the objects and nfqlua under build/NAME.
define sanitized_daemon
$(BUILD)/$(1)/%.o: src/%.c Makefile
	@mkdir -p $$(@D)
	$$(CC) $$(CPPFLAGS) $$(CFLAGS) $(2) $$(DEPFLAGS) $$(CORE_CFLAGS) $$(LUA_CFLAGS) -c -o $$@ $$<

$(BUILD)/$(1)/nfqlua: $(DAEMON_ALL_SRC:src/%.c=$(BUILD)/$(1)/%.o) $$(LUA_BC_OBJ)
	$$(CC) $(2) -o $$@ $$^ -Wl,-E $$(CORE_LIBS) $$(LUA_LIBS) $$(EV_LIBS) $$(PCAP_LIBS) $$(MHD_LIBS) -lpthread -ldl -lm

$(1): $(BUILD)/$(1)/nfqlua
endef
$(eval $(call sanitized_daemon,asan,$(ASAN_FLAGS)))
$(eval $(call sanitized_daemon,tsan,$(TSAN_FLAGS)))

# Fuzzing (clang's libFuzzer with ASan and UBSan). New inputs go to
# build/corpus_<target>; fuzz-merge folds the useful ones into spec/fuzz/corpus.
FUZZ_CORE_OBJ = $(CORE_SRC:src/%.c=$(BUILD)/fuzz/%.o)

$(BUILD)/fuzz/%.o: src/%.c Makefile
	@mkdir -p $(@D)
	$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_FLAGS) $(DEPFLAGS) $(CORE_CFLAGS) -c -o $@ $<
$(BUILD)/fuzz/%.o: spec/fuzz/%.c Makefile
	@mkdir -p $(@D)
	$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_FLAGS) $(DEPFLAGS) -Isrc $(CORE_CFLAGS) $(LUA_CFLAGS) -c -o $@ $<

$(BUILD)/fuzz_packet: $(BUILD)/fuzz/fuzz_packet.o $(FUZZ_CORE_OBJ)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $^ $(CORE_LIBS)
$(BUILD)/fuzz_reject: $(BUILD)/fuzz/fuzz_reject.o $(FUZZ_CORE_OBJ)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $^ $(CORE_LIBS)
$(BUILD)/fuzz_headers: $(BUILD)/fuzz/fuzz_headers.o $(FUZZ_CORE_OBJ) lua/nfq/cdef.lua
	$(FUZZ_CC) $(FUZZ_FLAGS) -Wl,-E -o $@ $(filter %.o,$^) $(CORE_LIBS) $(LUA_LIBS)
$(BUILD)/fuzz_build: $(BUILD)/fuzz/fuzz_build.o $(FUZZ_CORE_OBJ)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $^ $(CORE_LIBS)
$(BUILD)/fuzz_flows: $(BUILD)/fuzz/fuzz_flows.o $(FUZZ_CORE_OBJ)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $^ $(CORE_LIBS)
# The name parsers (src/nfq_names.h).
NAMES_FUZZ = dns dns_reply tls quic http
$(NAMES_FUZZ:%=$(BUILD)/fuzz_%): $(BUILD)/fuzz_%: $(BUILD)/fuzz/fuzz_%.o $(FUZZ_CORE_OBJ)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $^ $(CORE_LIBS)
$(BUILD)/fuzz_sets: $(BUILD)/fuzz/fuzz_sets.o $(FUZZ_CORE_OBJ)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $^ $(CORE_LIBS)

fuzz: deps-fuzz $(FUZZ_TARGETS:%=$(BUILD)/fuzz_%) lua/nfq/core.so
	$(SPEC_ENV) $(LUAJIT) spec/fuzz/fuzz_geneva.lua $(FUZZ_SECONDS) > $(BUILD)/fuzz_geneva.log 2>&1 & \
	for t in $(FUZZ_TARGETS); do \
		mkdir -p $(BUILD)/corpus_$$t; \
		ASAN_OPTIONS=detect_leaks=0 $(BUILD)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
			-artifact_prefix=$(BUILD)/ $(BUILD)/corpus_$$t spec/fuzz/corpus/$$t > $(BUILD)/fuzz_$$t.log 2>&1 & \
	done; wait; tail -n 12 $(FUZZ_TARGETS:%=$(BUILD)/fuzz_%.log) $(BUILD)/fuzz_geneva.log

# nfq.geneva's packet building on hostile packets, in LuaJIT (spec/fuzz/fuzz_geneva.lua).
fuzz-geneva: lua/nfq/core.so
	$(SPEC_ENV) $(LUAJIT) spec/fuzz/fuzz_geneva.lua $(FUZZ_SECONDS)

fuzz-merge: $(FUZZ_TARGETS:%=$(BUILD)/fuzz_%)
	for t in $(FUZZ_TARGETS); do \
		ASAN_OPTIONS=detect_leaks=0 $(BUILD)/fuzz_$$t -merge=1 spec/fuzz/corpus/$$t $(BUILD)/corpus_$$t; \
	done

# The corpus replayed with the ordinary compiler, over the core's objects
# that ship: part of make test.
$(BUILD)/replay/%.o: spec/fuzz/%.c Makefile
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(DEPFLAGS) -Isrc $(CORE_CFLAGS) $(LUA_CFLAGS) -c -o $@ $<

$(FUZZ_TARGETS:%=$(BUILD)/replay_%): $(BUILD)/replay_%: $(BUILD)/replay/fuzz_%.o $(BUILD)/replay/replay.o \
		$(CORE_OBJ) lua/nfq/cdef.lua
	$(CC) -Wl,-E -o $@ $(filter %.o,$^) $(CORE_LIBS) $(LUA_LIBS) -lpthread

fuzz-replay-build: $(FUZZ_TARGETS:%=$(BUILD)/replay_%)

fuzz-replay: fuzz-replay-build
	for t in $(FUZZ_TARGETS); do $(BUILD)/replay_$$t spec/fuzz/corpus/$$t/* || exit 1; done

# Every file install adds, so that uninstall removes exactly those. The man
# page and the systemd unit name the paths of this PREFIX.
INSTALLED = $(BINDIR)/nfqlua $(MANDIR)/man1/nfqlua.1 \
	$(LUA_FILES:%=$(LUA_MODULE_DIR)/%) $(LUA_CMODULE_DIR)/nfq/core.so \
	$(LIBDIR)/libnfqlua.a $(LIBDIR)/libnfqlua.so \
	$(INCLUDEDIR)/nfq_engine.h $(INCLUDEDIR)/nfq_core.h \
	$(EXAMPLES:scripts/examples/%=$(DOCDIR)/examples/%) $(SYSTEMD_DIR)/nfqlua@.service

install: all
	install -D -m 755 nfqlua $(DESTDIR)$(BINDIR)/nfqlua
	sed 's#/usr/local/share/doc/nfqlua/#$(DOCDIR)/#g' nfqlua.1 > nfqlua.1.tmp
	install -D -m 644 nfqlua.1.tmp $(DESTDIR)$(MANDIR)/man1/nfqlua.1
	rm -f nfqlua.1.tmp
	for f in $(LUA_FILES); do install -D -m 644 lua/$$f $(DESTDIR)$(LUA_MODULE_DIR)/$$f; done
	install -D -m 755 lua/nfq/core.so $(DESTDIR)$(LUA_CMODULE_DIR)/nfq/core.so
	install -D -m 644 $(BUILD)/libnfqlua.a $(DESTDIR)$(LIBDIR)/libnfqlua.a
	install -D -m 755 $(BUILD)/libnfqlua.so $(DESTDIR)$(LIBDIR)/libnfqlua.so
	install -D -m 644 src/nfq_engine.h $(DESTDIR)$(INCLUDEDIR)/nfq_engine.h
	install -D -m 644 src/nfq_core.h $(DESTDIR)$(INCLUDEDIR)/nfq_core.h
	for f in $(EXAMPLES); do install -D -m 644 $$f $(DESTDIR)$(DOCDIR)/examples/$${f#scripts/examples/}; done
	sed 's#/usr/local/bin/#$(BINDIR)/#g' scripts/systemd/nfqlua@.service > nfqlua@.service.tmp
	install -D -m 644 nfqlua@.service.tmp $(DESTDIR)$(SYSTEMD_DIR)/nfqlua@.service
	rm -f nfqlua@.service.tmp

# Debian packages (nfqlua, lua-nfq, libnfqlua-dev; see debian/control) in
# build/deb/: dpkg-buildpackage builds them in a copy of the tree there, so
# that its output stays out of the checkout's parent, and lintian checks them.
DEB_DIR = $(BUILD)/deb
DEB_SRC = $(DEB_DIR)/nfqlua-$(VERSION)

deb: deps-deb
	@head -n 1 debian/changelog | grep -q '^nfqlua ($(VERSION))' || { \
		echo "make deb: the first entry of debian/changelog is not for version $(VERSION) (the file VERSION); add one with dch -v $(VERSION)" >&2; exit 1; }
	rm -rf $(DEB_DIR)
	mkdir -p $(DEB_SRC)
	tar --exclude=./$(BUILD) --exclude=./.git -cf - . | tar -xf - -C $(DEB_SRC)
	$(MAKE) -s -C $(DEB_SRC) clean
	cd $(DEB_SRC) && DEB_BUILD_OPTIONS="nocheck noautodbgsym parallel=2" dpkg-buildpackage -b -us -uc
	lintian --fail-on error $(DEB_DIR)/*.changes

uninstall:
	rm -f $(INSTALLED:%=$(DESTDIR)%)
	-rmdir $(DESTDIR)$(LUA_MODULE_DIR)/nfq $(DESTDIR)$(LUA_CMODULE_DIR)/nfq \
		$(DESTDIR)$(DOCDIR)/examples/openresty $(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(DOCDIR) 2>/dev/null

clean:
	rm -rf $(BUILD) nfqlua lua/nfq/core.so lua/nfq/cdef.lua

-include $(wildcard $(BUILD)/*.d $(BUILD)/*/*.d)

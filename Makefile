# nfqlua: build, test and demo. `make test` and `make demo` install what they
# need with apt-get first (as root, on Debian).

CC ?= cc
LUAJIT ?= luajit
BUSTED ?= busted
PKG_CONFIG ?= pkg-config

DEB_PACKAGES = build-essential pkg-config libnetfilter-queue-dev libnfnetlink-dev \
	libmnl-dev libluajit2-5.1-dev luajit2 libev-dev lua-busted iptables iproute2
CORE_PKGS = libnetfilter_queue libmnl
LUA_PKG = luajit

CFLAGS ?= -O2 -g
CFLAGS += -std=gnu11 -Wall -Wextra -Wshadow -fPIC
# Resolved lazily so that `make deps` can install pkg-config data first.
CORE_CFLAGS = $(shell $(PKG_CONFIG) --cflags $(CORE_PKGS))
CORE_LIBS = $(shell $(PKG_CONFIG) --libs $(CORE_PKGS))
LUA_CFLAGS = $(shell $(PKG_CONFIG) --cflags $(LUA_PKG))
LUA_LIBS = $(shell $(PKG_CONFIG) --libs $(LUA_PKG))
# Debian's libev ships no pkg-config file.
EV_LIBS = $(shell $(PKG_CONFIG) --libs libev 2>/dev/null || echo -lev)

BUILD = build
CORE_SRC = src/nfq_queue.c src/nfq_packet.c src/nfq_headers.c
ENGINE_SRC = src/nfq_engine.c src/nfq_log.c
CORE_OBJ = $(CORE_SRC:src/%.c=$(BUILD)/%.o)
ENGINE_OBJ = $(ENGINE_SRC:src/%.c=$(BUILD)/%.o)
# Module bytecode linked into the binary: require finds luaJIT_BC_<name>.
LUA_BC_OBJ = $(BUILD)/bc_nfq.o $(BUILD)/bc_nfq_cdef.o $(BUILD)/bc_nfq_engine.o $(BUILD)/bc_nfq_headers.o

SPEC_ENV = NFQ_ROOT=$(CURDIR) LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' LUA_CPATH='lua/?.so;;'

.PHONY: all deps test unit demo clean

all: nfqlua lua/nfq/core.so

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

lua/nfq/cdef.lua: src/nfq_core.h
	@mkdir -p $(@D)
	{ echo '-- Generated from src/nfq_core.h by make: do not edit.'; \
	  echo 'local ffi = require "ffi"'; \
	  echo 'if pcall(ffi.typeof, "struct nfq_packet") then return true end'; \
	  echo 'ffi.cdef [['; \
	  sed -n '/BEGIN CDEF/,/END CDEF/p' $< | grep -v 'CDEF'; \
	  echo ']]'; echo 'return true'; } > $@

$(BUILD)/%.o: src/%.c src/nfq_core.h src/nfq_internal.h | $(BUILD)
	$(CC) $(CFLAGS) $(CORE_CFLAGS) $(LUA_CFLAGS) -c -o $@ $<

$(BUILD)/bc_nfq.o: lua/nfq.lua | $(BUILD)
	$(LUAJIT) -b -n nfq $< $@
$(BUILD)/bc_nfq_cdef.o: lua/nfq/cdef.lua | $(BUILD)
	$(LUAJIT) -b -n nfq.cdef $< $@
$(BUILD)/bc_nfq_engine.o: lua/nfq/engine.lua | $(BUILD)
	$(LUAJIT) -b -n nfq.engine $< $@
$(BUILD)/bc_nfq_headers.o: lua/nfq/headers.lua | $(BUILD)
	$(LUAJIT) -b -n nfq.headers $< $@

$(BUILD):
	mkdir -p $@

lua/nfq/core.so: $(CORE_OBJ)
	$(CC) -shared -o $@ $^ $(CORE_LIBS) -lpthread

# -Wl,-E exports the core's functions, so the module's FFI finds them in ffi.C.
nfqlua: $(CORE_OBJ) $(ENGINE_OBJ) $(BUILD)/nfqlua.o $(LUA_BC_OBJ)
	$(CC) -o $@ $^ -Wl,-E $(CORE_LIBS) $(LUA_LIBS) $(EV_LIBS) -lpthread -ldl -lm

test: deps
	$(MAKE) all
	$(SPEC_ENV) $(BUSTED) --lua=$(LUAJIT) -o spec/helpers/summary.lua spec

unit: all
	$(SPEC_ENV) $(BUSTED) --lua=$(LUAJIT) --exclude-tags=kernel spec

demo: deps
	$(MAKE) all
	./scripts/demo.sh

clean:
	rm -rf $(BUILD) nfqlua lua/nfq/core.so lua/nfq/cdef.lua

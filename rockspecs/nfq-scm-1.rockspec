-- Build and install from a checkout: luarocks --lua-version 5.1 make rockspecs/nfq-scm-1.rockspec
-- The module needs LuaJIT (it is written against the FFI); the Debian
-- packages the Makefile lists (make deps) must be installed first.
rockspec_format = "3.0"
package = "nfq"
version = "scm-1"
source = {
	-- No published repository yet: luarocks make builds the checkout it runs in.
	url = "git+file://.",
}
description = {
	summary = "Lua-scriptable Linux NFQUEUE packet filter: a module and the nfqlua daemon",
	detailed = [[
Packets that an iptables -j NFQUEUE rule queues are handed, in batches, to a
Lua function that inspects them through the FFI and gives verdicts: accept,
drop, repeat, mark, rewrite, reorder. require "nfq" in LuaJIT or OpenResty,
or run the nfqlua daemon with hot reload on SIGHUP.]],
	license = "MIT",
	labels = { "netfilter", "nfqueue", "firewall", "luajit", "ffi" },
}
dependencies = {
	"lua == 5.1",
}
build = {
	type = "make",
	build_target = "all",
	-- The Makefile adds its warnings, -std and -fPIC to these (override CFLAGS +=).
	build_variables = {
		CFLAGS = "$(CFLAGS)",
	},
	install_variables = {
		PREFIX = "$(PREFIX)",
		BINDIR = "$(BINDIR)",
		LUA_MODULE_DIR = "$(LUADIR)",
		LUA_CMODULE_DIR = "$(LIBDIR)",
		-- luarocks deploys all of lib/ as Lua C modules: libnfqlua, the
		-- systemd unit, the header, man page and examples stay in the rock's
		-- own directory (luarocks show --rock-dir nfq).
		LIBDIR = "$(PREFIX)/share/nfqlua/lib",
		SYSTEMD_DIR = "$(PREFIX)/share/nfqlua/systemd",
	},
}

/*
 * fuzz_headers.c: libFuzzer target for the Lua header views (nfq.headers):
 * each input is laid under every view and every field is read, in a LuaJIT
 * state that lives for the whole run. Run from the repository root.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

static lua_State *L;
static int fuzz_ref;

static const char fuzz_lua[] =
	"package.path = 'lua/?.lua;' .. package.path\n"
	"local ffi = require 'ffi'\n"
	"local headers = require 'nfq.headers'\n"
	"local C = ffi.C\n"
	"local u8p = ffi.typeof('const uint8_t *')\n"
	"local fields = {\n"
	"  ip = { 'version', 'header_length', 'total_length', 'id', 'fragment_offset', 'more_fragments', 'ttl', 'protocol', 'checksum' },\n"
	"  ip6 = { 'version', 'traffic_class', 'flow_label', 'payload_length', 'next_header' },\n"
	"  udp = { 'sport', 'dport', 'length', 'checksum' },\n"
	"  tcp = { 'sport', 'dport', 'seq', 'ack', 'header_length', 'window', 'syn', 'fin' },\n"
	"  icmp = { 'type', 'code', 'checksum' },\n"
	"}\n"
	"local function touch(h, names) if h then for _, k in ipairs(names) do local _ = h[k] end end end\n"
	"return function(ptr, len)\n"
	"  local data = ffi.cast(u8p, ptr)\n"
	"  local ip = headers.ipv4(data, len)\n"
	"  touch(ip, fields.ip)\n"
	"  if ip then ip:src_text() ip:dst_text() end\n"
	"  local ip6 = headers.ipv6(data, len)\n"
	"  touch(ip6, fields.ip6)\n"
	"  if ip6 then ip6:src_text() end\n"
	"  touch(headers.udp(C, data, len), fields.udp)\n"
	"  touch(headers.tcp(C, data, len), fields.tcp)\n"
	"  touch(headers.icmp(C, data, len), fields.icmp)\n"
	"  headers.transport(C, data, len)\n"
	"end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!L) {
		L = luaL_newstate();
		luaL_openlibs(L);
		if (luaL_loadstring(L, fuzz_lua) || lua_pcall(L, 0, 1, 0)) {
			fprintf(stderr, "fuzz_headers: %s\n", lua_tostring(L, -1));
			abort();
		}
		fuzz_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	}
	uint8_t *copy = malloc(size ? size : 1);
	if (!copy)
		return 0;
	memcpy(copy, data, size);
	lua_rawgeti(L, LUA_REGISTRYINDEX, fuzz_ref);
	lua_pushlightuserdata(L, copy);
	lua_pushinteger(L, (lua_Integer)size);
	if (lua_pcall(L, 2, 0, 0) != 0) {
		fprintf(stderr, "fuzz_headers: %s\n", lua_tostring(L, -1));
		abort();
	}
	free(copy);
	return 0;
}

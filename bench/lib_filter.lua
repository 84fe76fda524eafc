-- The benchmark's header-parsing filter in library mode: a plain LuaJIT loop
-- around require "nfq". From the repo root:
--   LUA_PATH='lua/?.lua;;' LUA_CPATH='lua/?.so;;' luajit bench/lib_filter.lua [QUEUE]
-- The callback is bench/filter.lua itself, so both modes run the same code.
local nfq = require "nfq"

local dir = arg[0]:match("^(.*/)") or "./"
local filter = assert(dofile(dir .. "filter.lua"))
local queue_num = tonumber(arg[1] or "0")

local q = assert(nfq.new())
assert(q:bind(queue_num, filter, {
	max_len = tonumber(os.getenv("BENCH_MAXLEN") or "1024"),
}))
-- SIGTERM ends the process; the kernel drops what is still queued.
assert(q:run())

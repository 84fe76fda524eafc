-- scripts/examples/blocklist.lua without the kernel: its load of a list of
-- 1,000,000 names (CPU time, RSS, the set's C memory), then ns and Lua heap
-- bytes per packet for DNS queries for 4096 random names not on the list,
-- through the module's own dispatch (spec/helpers/batch.lua, 64 batches of
-- 64 packets taken in turn), next to accept_all.lua on the same batches.
-- Prints a Markdown table; bench/run.sh puts it in bench/RESULTS.md.
--   LUA_PATH='lua/?.lua;spec/?.lua;;' LUA_CPATH='lua/?.so;;' luajit bench/blocklist.lua [LIST]
local ffi = require "ffi"
local testing = require "nfq.testing"
local batch = require "helpers.batch"
local names = require "helpers.names"

local QUEUES, ROUNDS, RUNS = 64, 300, 5

ffi.cdef [[int setenv(const char *name, const char *value, int overwrite);]]

local function rss_mb()
	for line in io.lines("/proc/self/status") do
		local kb = line:match("^VmRSS:%s+(%d+)")
		if kb then return tonumber(kb) / 1024 end
	end
end

local list = arg[1]
if not list then
	list = os.tmpname()
	names.write_names(list, 1000000, 1)
end
ffi.C.setenv("NFQ_BLOCKLIST", list, 1)
ffi.C.setenv("NFQ_BLOCKLIST_REPORT", "0", 1)

collectgarbage()
local rss_before, t = rss_mb(), os.clock()
local blocklist = assert(loadfile("scripts/examples/blocklist.lua"))().on_packet
local load_s, rss_after = os.clock() - t, rss_mb()
local accept_all = assert(loadfile("scripts/examples/accept_all.lua"))()

-- Queries for one label of 8 to 14 random characters under the list's
-- commonest TLDs: the chance that one is listed is about 1 in a million.
local rand = names.rng(99)
local TLDS = { "com", "com", "net", "org", "io", "de" }
local function query(i)
	local q = "\18\52\1\0\0\1\0\0\0\0\0\0"
	for _, label in ipairs { names.label(rand, 8, 14), TLDS[rand(#TLDS)] } do q = q .. string.char(#label) .. label end
	return testing.packet { payload = q .. "\0\0\1\0\1", sport = 40000 + i }
end

local function runner(filter)
	local runs, keep = {}, {}
	for k = 1, QUEUES do runs[k], keep[k] = batch.synthetic_queue(filter, nil, query) end
	return function()
		for k = 1, QUEUES do runs[k]() end
	end, keep
end

local function measure(filter)
	local run, keep = runner(filter)
	for _ = 1, 50 do run() end
	local times = {}
	for r = 1, RUNS do
		local start = os.clock()
		for _ = 1, ROUNDS do run() end
		times[r] = (os.clock() - start) / (ROUNDS * QUEUES * batch.SIZE) * 1e9
	end
	table.sort(times)
	collectgarbage()
	collectgarbage("stop")
	local before = collectgarbage("count")
	for _ = 1, ROUNDS do run() end
	local grown = (collectgarbage("count") - before) * 1024
	collectgarbage("restart")
	assert(keep[1])
	return times[math.ceil(RUNS / 2)], grown / (ROUNDS * QUEUES * batch.SIZE)
end

local accept_ns, accept_bytes = measure(accept_all)
local blocklist_ns, blocklist_bytes = measure(blocklist)
print(("Load of the list: %.2f s of CPU, RSS %.0f MB more (the set, the flow table and its stream buffers)."):format(
	load_s, rss_after - rss_before))
print()
print("| filter, DNS queries not listed | ns per packet (median of " .. RUNS .. ") | Lua heap bytes per packet |")
print("|---|---:|---:|")
print(("| `scripts/examples/accept_all.lua` | %.0f | %.2f |"):format(accept_ns, accept_bytes))
print(("| `scripts/examples/blocklist.lua`, 1,000,000 names | %.0f | %.2f |"):format(blocklist_ns, blocklist_bytes))
if not arg[1] then os.remove(list) end

-- What the Lua side costs per packet, without the kernel: batches of 64
-- IPv4/UDP packets go through the module's own dispatch and verdict code
-- (spec/helpers/batch.lua, as in the allocation and JIT specs). Prints ns
-- per packet for each filter, median of 5.
--   LUA_PATH='lua/?.lua;spec/?.lua;;' LUA_CPATH='lua/?.so;;' luajit bench/dispatch_cost.lua
local batch = require "helpers.batch"

local BATCH, WARM_BATCHES, BATCHES, RUNS = batch.SIZE, 2000, 20000, 5
local FILTERS = { "scripts/examples/accept_all.lua", "bench/filter.lua", "scripts/examples/port_firewall.lua" }

local function load_filter(path)
	local f = assert(loadfile(path))()
	return type(f) == "table" and f.on_packet or f
end

print("| filter | ns per packet (median of " .. RUNS .. ") |")
print("|---|---:|")
for _, path in ipairs(FILTERS) do
	local run_batch, keep = batch.synthetic_queue(load_filter(path), function() return 9999 end)
	for _ = 1, WARM_BATCHES do run_batch() end
	local times = {}
	for r = 1, RUNS do
		local t = os.clock()
		for _ = 1, BATCHES do run_batch() end
		times[r] = (os.clock() - t) / (BATCHES * BATCH) * 1e9
	end
	table.sort(times)
	print(("| `%s` | %.0f |"):format(path, times[math.ceil(RUNS / 2)]))
	assert(keep.q ~= nil)
end

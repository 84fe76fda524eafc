-- What the flow table costs per packet on the Lua side, without the kernel:
-- batches of 64 IPv4/UDP packets go through the module's own dispatch and
-- verdict code (spec/helpers/batch.lua), to accept_all and to bench/flows.lua,
-- with the source port of each packet turning over 10 and over 100,000
-- flows (FLOWS: "10 100000"), as gen -F does. Prints ns per packet, median
-- of RUNS (default 5) runs of PACKETS (default 2,000,000); FILTERS="a.lua
-- b.lua" compares several filters, their runs alternating.
--   LUA_PATH='lua/?.lua;spec/?.lua;;' LUA_CPATH='lua/?.so;;' luajit bench/flows_cost.lua
local ffi = require "ffi"
local batch = require "helpers.batch"

local BATCH, RUNS = batch.SIZE, tonumber(os.getenv("RUNS") or "5")
local PACKETS = tonumber(os.getenv("PACKETS") or "2000000")

local function load_filter(path)
	local f = assert(loadfile(path))()
	return type(f) == "table" and f.on_packet or f
end

-- A runner for filter over n flows: each call sends PACKETS packets and
-- gives ns per packet. Each batch's packets take the next source ports in
-- turn; the port number is rewritten in the payload before the batch goes
-- out (the same work for every filter).
local function runner(filter, n)
	local run_batch, keep = batch.synthetic_queue(filter, function() return 9999 end)
	local payloads = keep.payloads
	local sport = ffi.new("uint8_t *[?]", BATCH)
	local ip = ffi.new("uint8_t *[?]", BATCH)
	for i = 0, BATCH - 1 do
		ip[i] = payloads[i]
		sport[i] = payloads[i] + 20
	end
	local next_flow = 0
	local function run()
		-- sport and ip point into the payloads: keep them alive with the runner.
		local _ = keep
		for i = 0, BATCH - 1 do
			local f = next_flow
			next_flow = f + 1 == n and 0 or f + 1
			-- 65536 * 256 flows at most: the port, then the third address byte.
			local port = f % 65536
			sport[i][0], sport[i][1] = math.floor(port / 256), port % 256
			ip[i][14] = math.floor(f / 65536)
		end
		run_batch()
	end
	for _ = 1, math.max(2 * n / BATCH, 2000) do run() end
	return function()
		local t = os.clock()
		for _ = 1, PACKETS / BATCH do run() end
		return (os.clock() - t) / PACKETS * 1e9
	end
end

local function median(times)
	table.sort(times)
	return times[math.ceil(#times / 2)]
end

-- FILTERS: the scripts to compare with accept_all (default bench/flows.lua);
-- their runs alternate within each round, so that load on a shared machine
-- falls on all of them alike.
local paths = {}
for path in (os.getenv("FILTERS") or "bench/flows.lua"):gmatch("%S+") do paths[#paths + 1] = path end
local header, rule = "| flows | accept_all ns/pkt |", "|---:|---:|"
for _, path in ipairs(paths) do
	header, rule = header .. (" %s ns/pkt | difference |"):format(path), rule .. "---:|---:|"
end
print(header)
print(rule)
for n in (os.getenv("FLOWS") or "10 100000"):gmatch("%d+") do
	n = tonumber(n)
	local runs = { runner(load_filter("scripts/examples/accept_all.lua"), n) }
	for i, path in ipairs(paths) do runs[i + 1] = runner(load_filter(path), n) end
	local times = {}
	for i = 1, #runs do times[i] = {} end
	for r = 1, RUNS do
		for i = 1, #runs do times[i][r] = runs[i]() end
	end
	local base = median(times[1])
	local row = ("| %d | %.0f |"):format(n, base)
	for i = 2, #runs do
		local m = median(times[i])
		row = row .. (" %.0f | %+.0f |"):format(m, m - base)
	end
	print(row)
	collectgarbage()
end

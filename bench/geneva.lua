-- What nfq.geneva costs per packet, without the kernel (run.sh measures it
-- on a real queue): batches of 64 TCP segments of an HTTP request go through
-- the module's own dispatch and verdict code (spec/helpers/batch.lua), each
-- given to strategy:apply, its packets copied to a sink where nfq.send would
-- send them. Prints ns per input packet, median of 5, beside accept_all's
-- and a drop's, and the Lua heap's growth per packet.
--   LUA_PATH='lua/?.lua;spec/?.lua;;' LUA_CPATH='lua/?.so;;' luajit bench/geneva.lua
-- Geneva's own engine on the same packets: bench/geneva_python.py.
local ffi = require "ffi"
local testing = require "nfq.testing"
local geneva = require "nfq.geneva"
local batch = require "helpers.batch"

local BATCH, WARM_BATCHES, BATCHES, RUNS = batch.SIZE, 2000, 10000, 5

local sink = ffi.new("uint8_t[65536]")
local function send(ptr, len)
	ffi.copy(sink, ptr, len)
	return true
end

local segment = testing.packet { proto = "tcp", tcp_flags = 0x18,
	payload = "GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n" }
local ack = testing.packet { proto = "tcp", tcp_flags = 0x10 }
local function all_segments() return segment end
-- a connection's client side: a request, an ACK, ...
local function one_in_two(i) return i % 2 == 0 and segment or ack end

local function strategy(dna)
	local s = assert(geneva.parse(dna, { send = send }))
	return function(pkt) s:apply(pkt, "out") end
end

local DUP = "[TCP:flags:PA]-duplicate(tamper{TCP:dataofs:replace:10}(tamper{IP:ttl:replace:10},),)-|"
local FRAG = "[TCP:flags:PA]-fragment{tcp:8:True}(,fragment{tcp:4:True})-|"
local ROWS = {
	{ "accept_all", function(pkt) pkt:accept() end, all_segments },
	{ "drop", function(pkt) pkt:drop() end, all_segments },
	{ "`" .. DUP .. "`, every packet a request", strategy(DUP), all_segments },
	{ "the same, one packet in two a request (the other an ACK)", strategy(DUP), one_in_two },
	{ "`" .. FRAG .. "`, every packet a request", strategy(FRAG), all_segments },
	{ "the same, one packet in two a request", strategy(FRAG), one_in_two },
	{ "`[TCP:flags:S]-duplicate-|`, which no packet matches", strategy "[TCP:flags:S]-duplicate-|", all_segments },
}

print("| per input packet | ns (median of " .. RUNS .. ") | Lua heap bytes |")
print("|---|---:|---:|")
for i, row in ipairs(ROWS) do
	if os.getenv("ONLY") and tonumber(os.getenv("ONLY")) ~= i then goto next end
	jit.flush()
	local run_batch, keep = batch.synthetic_queue(row[2], nil, row[3])
	for _ = 1, WARM_BATCHES do run_batch() end
	collectgarbage()
	local times = {}
	local heap = collectgarbage("count")
	collectgarbage("stop")
	for r = 1, RUNS do
		local t = os.clock()
		for _ = 1, BATCHES do run_batch() end
		times[r] = (os.clock() - t) / (BATCHES * BATCH) * 1e9
	end
	local grown = (collectgarbage("count") - heap) * 1024 / (RUNS * BATCHES * BATCH)
	collectgarbage("restart")
	table.sort(times)
	print(("| %s | %.0f | %.2f |"):format(row[1], times[math.ceil(RUNS / 2)], grown))
	assert(keep.q ~= nil)
	::next::
end

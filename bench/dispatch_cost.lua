-- What the Lua side costs per packet, without the kernel: batches of 64
-- IPv4/UDP packets go through the module's own dispatch and verdict code
-- (spec/helpers/batch.lua, as in the allocation and JIT specs). Prints ns
-- per packet for each filter, median of 5.
--   LUA_PATH='lua/?.lua;spec/?.lua;;' LUA_CPATH='lua/?.so;;' luajit bench/dispatch_cost.lua
local ffi = require "ffi"
local nfq = require "nfq"
local testing = require "nfq.testing"
local batch = require "helpers.batch"

local BATCH, WARM_BATCHES, BATCHES, RUNS = batch.SIZE, 2000, 20000, 5

local function load_filter(path)
	local f = assert(loadfile(path))()
	return type(f) == "table" and f.on_packet or f
end

-- Packet buffers: the pieces go to a sink, a copy into memory, where a
-- filter would send them.
local sink = ffi.new("uint8_t[65536]")
local function send(b)
	local ptr, len = b:view()
	ffi.copy(sink, ptr, len)
end

-- A TCP segment of 100 bytes of data, for the split.
local tcp_segment = testing.packet { proto = "tcp", payload = ("x"):rep(100), tcp_flags = 0x18 }

-- Accept, and record every nth packet with nfq.pcap into /dev/null: the
-- packet path's part of recording (the copy into the buffer), the writer
-- thread's write(2) on whichever CPU is free. Buffers large enough that a
-- writer sharing the CPU with the packet path keeps up.
local recorder = assert(nfq.pcap("/dev/null", { keep = 0, buffer_bytes = 16 * 1024 * 1024 }))
local function record_every(n)
	local count = 0
	return function(pkt)
		count = count + 1
		if count == n then
			count = 0
			recorder:write(pkt)
		end
		pkt:accept()
	end
end

local FILTERS = {
	{ "`scripts/examples/accept_all.lua`", load_filter("scripts/examples/accept_all.lua") },
	{ "`bench/filter.lua`", load_filter("bench/filter.lua") },
	{ "`scripts/examples/port_firewall.lua`", load_filter("scripts/examples/port_firewall.lua") },
	{ "accept, every 10th packet recorded with `nfq.pcap` (to /dev/null)", record_every(10) },
	{ "accept, every packet recorded with `nfq.pcap` (to /dev/null)", record_every(1) },
	-- A drop is a verdict message of its own (accepts go out in batches):
	-- the baseline of the rows after it.
	{ "drop", function(pkt) pkt:drop() end },
	{ "drop, and two copies with a new TTL and checksums to a sink", function(pkt)
		local a = pkt:copy()
		a:ip().ttl = 10
		a:fix_checksums()
		send(a)
		local b = pkt:copy()
		b:ip().ttl = 20
		b:fix_checksums()
		send(b)
		pkt:drop()
	end },
	{ "drop, and a copy with a new TTL and checksums split in 2 to a sink (140-byte TCP)", function(pkt)
		local b = pkt:copy()
		b:ip().ttl = 10
		b:fix_checksums()
		local head, tail = nfq.tcp_split(b, 50)
		send(head)
		send(tail)
		pkt:drop()
	end, function() return tcp_segment end },
	{ "drop, and a copy with a new TTL and checksums cut in 2 fragments to a sink", function(pkt)
		local b = pkt:copy()
		b:ip().ttl = 10
		b:fix_checksums()
		local first, second = nfq.ip_fragment(b, 8)
		send(first)
		send(second)
		pkt:drop()
	end },
}

print("| filter | ns per packet (median of " .. RUNS .. ") |")
print("|---|---:|")
for _, f in ipairs(FILTERS) do
	local run_batch, keep = batch.synthetic_queue(f[2], function() return 9999 end, f[3])
	for _ = 1, WARM_BATCHES do run_batch() end
	local times = {}
	for r = 1, RUNS do
		local t = os.clock()
		for _ = 1, BATCHES do run_batch() end
		times[r] = (os.clock() - t) / (BATCHES * BATCH) * 1e9
	end
	table.sort(times)
	print(("| %s | %.0f |"):format(f[1], times[math.ceil(RUNS / 2)]))
	assert(keep.q ~= nil)
end

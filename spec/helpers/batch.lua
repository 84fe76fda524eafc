-- A batch of real IPv4/UDP packets pushed through the module's own
-- dispatch and verdict code, with no kernel queue behind it: for the
-- allocation and JIT specs (spec/05) and bench/dispatch_cost.lua. The
-- verdict messages go to a queue number nobody bound, so the kernel
-- refuses them and no traffic is touched.
local ffi = require "ffi"
local nfq = require "nfq"
local C = nfq._C

local B = { SIZE = 64 }

--- An IPv4/UDP packet from 127.0.0.1 to 127.0.0.1:dport with 8 bytes of data.
function B.udp_packet(dport)
	local l4 = "\0\1" .. string.char(math.floor(dport / 256), dport % 256) .. "\0\16\0\0" .. "payload!"
	return "\69\0\0\36\0\0\0\0\64\17\0\0\127\0\0\1\127\0\0\1" .. l4
end

--- A queue whose batch we fill ourselves, packet i going to dport_of(i)
-- (or, with packet_of, being packet_of(i)). Returns run(), which dispatches
-- the whole batch to callback and sends its verdicts, and a table that keeps
-- slots and payloads alive while in use.
function B.synthetic_queue(callback, dport_of, packet_of)
	local q = C.nfq_queue_open(-1)
	assert(q ~= nil, "cannot open a netlink socket")
	local pkts = ffi.new("struct nfq_packet[?]", B.SIZE)
	-- The slots are ours, and the queue was never bound: close it as such.
	ffi.gc(q, function(queue)
		queue.pkts, queue.queue_num = nil, -1
		C.nfq_queue_close(queue)
	end)
	local payloads = {}
	for i = 0, B.SIZE - 1 do
		local data = packet_of and packet_of(i) or B.udp_packet(dport_of(i))
		payloads[i] = ffi.new("uint8_t[?]", #data)
		ffi.copy(payloads[i], data, #data)
		pkts[i].payload, pkts[i].payload_len = payloads[i], #data
		pkts[i].queue = q
	end
	q.pkts, q.queue_num = pkts, 65000
	local queue = nfq._adopt(q, callback)
	local id = 0
	local function run()
		for i = 0, B.SIZE - 1 do
			id = id + 1
			pkts[i].state, pkts[i].flags, pkts[i].id = C.NFQ_PKT_PENDING, 0, id
		end
		q.count, q.pos, q.in_dispatch = B.SIZE, 0, 1
		queue:_dispatch()
		C.nfq_queue_flush(q)
	end
	return run, { q = q, pkts = pkts, payloads = payloads }
end

--- For an offline queue q (nfq_queue_open_offline) adopted as queue: a
-- function that pushes SIZE copies of the packet bytes, dispatches them to
-- the callback, sends what it sent and clears the records.
function B.offline_round(q, queue, bytes)
	local meta = ffi.new("struct nfq_packet")
	return function()
		for i = 1, B.SIZE do
			meta.id = i
			C.nfq_queue_offline_push(q, meta, bytes, #bytes)
		end
		queue:_dispatch()
		C.nfq_queue_flush(q)
		C.nfq_queue_clear_records(q)
	end
end

--- How many KB the Lua heap grows over `runs` calls of fn, after `warm`
-- calls that let the JIT compile it, with the collector stopped meanwhile.
function B.heap_growth(fn, warm, runs)
	for _ = 1, warm do fn() end
	collectgarbage()
	collectgarbage()
	collectgarbage("stop")
	local before = collectgarbage("count")
	for _ = 1, runs do fn() end
	local grown = collectgarbage("count") - before
	collectgarbage("restart")
	return grown
end

return B

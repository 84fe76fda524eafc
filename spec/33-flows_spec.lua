-- nfq.flows: the flow table and TCP stream bytes. Offline (nfq.testing, on
-- the packets' clock) for identity, states, expiry, eviction, end reasons,
-- the fiddly stream cases and bad input; the per-packet path for allocation;
-- then real connections through the daemon: counts in both directions, ends,
-- a table handed over across reloads, and a request read whole from 1-byte
-- and reordered segments by scripts/examples/flow_counter.lua.
local ffi = require "ffi"
local nfq = require "nfq"
local testing = require "nfq.testing"
local H = require "helpers.net"
local batch = require "helpers.batch"

local C = ffi.C
local SYN, FIN, RST, PSH, ACK = 2, 1, 4, 8, 16

local function tcp(from, to, flags, seq, payload, ack)
	return testing.packet {
		proto = "tcp", src = from[1], sport = from[2], dst = to[1], dport = to[2], tcp_flags = flags,
		seq = (seq or 1) % 2 ^ 32, ack = ack or 0, payload = payload,
	}
end

local function udp(from, to, payload)
	return testing.packet { proto = "udp", src = from[1], sport = from[2], dst = to[1], dport = to[2], payload = payload }
end

-- Packets given with times: { time, bytes } pairs.
local function timed(list)
	local out = {}
	for i, p in ipairs(list) do out[i] = { time = p[1], bytes = p[2] } end
	return out
end

local client, server = { "10.0.0.1", 40000 }, { "10.0.0.2", 80 }

describe("nfq.flows offline", function()
	after_each(function() collectgarbage() end)

	it("maps both directions to one flow, with counters and TCP states per direction", function()
		local flows = nfq.flows { max = 16, state = "struct { uint32_t seen; }" }
		local seen = {}
		testing.run(function(pkt)
			local f = flows:get(pkt)
			f.state.seen = f.state.seen + 1
			seen[#seen + 1] = ("%s %s %d/%d %d/%d %s %d"):format(tostring(f), f.dir, f.orig_packets, f.reply_packets,
				f.orig_bytes, f.reply_bytes, tostring(f.tcp_state), f.state.seen)
			pkt:accept()
		end, {
			tcp(client, server, SYN, 100),
			tcp(server, client, SYN + ACK, 500, nil, 101),
			tcp(client, server, ACK, 101, nil, 501),
			tcp(client, server, PSH + ACK, 101, "hello", 501),
			tcp(server, client, FIN + ACK, 501, nil, 106),
			tcp(client, server, FIN + ACK, 106, nil, 502),
			udp({ "fd00::1", 5353 }, { "fd00::2", 53 }, "q"),
			udp({ "fd00::2", 53 }, { "fd00::1", 5353 }, "answer"),
			testing.packet { proto = "icmp", src = "10.0.0.1", dst = "10.0.0.9", icmp_type = 8 },
			testing.packet { proto = "icmp", src = "10.0.0.9", dst = "10.0.0.1", icmp_type = 0 },
		})
		local f = "flow tcp 10.0.0.1:40000 > 10.0.0.2:80"
		assert.same({
			f .. " orig 1/0 40/0 handshake 1",
			f .. " reply 1/1 40/40 handshake 2",
			f .. " orig 2/1 80/40 established 3",
			f .. " orig 3/1 125/40 established 4",
			f .. " reply 3/2 125/80 closing 5",
			f .. " orig 4/2 165/80 closed 6",
			"flow udp [fd00::1]:5353 > [fd00::2]:53 orig 1/0 49/0 nil 1",
			"flow udp [fd00::1]:5353 > [fd00::2]:53 reply 1/1 49/54 nil 2",
			"flow icmp 10.0.0.1:1 > 10.0.0.9:1 orig 1/0 28/0 nil 1",
			"flow icmp 10.0.0.1:1 > 10.0.0.9:1 reply 1/1 28/28 nil 2",
		}, seen)
		assert.equal(3, flows:count())
	end)

	it("finds without making or counting, and gives nil for what is not a flow", function()
		local flows = nfq.flows { max = 4 }
		local got = {}
		testing.run(function(pkt)
			local found = flows:find(pkt)
			got[#got + 1] = found and found.packets or "none"
			if pkt:get_payload_len() > 20 then flows:get(pkt) end
			got[#got + 1] = flows:find(pkt) and flows:find(pkt).packets or "none"
		end, {
			udp(client, server, "a"),
			udp(server, client, "b"),
			"\69\0\0\20\0\0\0\0\64\6\0\0\10\0\0\1\10\0\0\2", -- TCP with no TCP header: cut
		})
		assert.same({ "none", 1, 1, 2, "none", "none" }, got)
	end)

	it("zeroes the state of each new flow and keeps flows apart", function()
		local flows = nfq.flows { max = 8, state = "struct { uint8_t verdict; double t; }" }
		local out = {}
		testing.run(function(pkt)
			local f = flows:get(pkt)
			out[#out + 1] = f.state.verdict .. "," .. f.state.t
			f.state.verdict, f.state.t = f.state.verdict + 1, 0.5
		end, { udp(client, server), udp({ "10.0.0.1", 40001 }, server), udp(server, client) })
		assert.same({ "0,0", "0,0", "1,0.5" }, out)
	end)

	it("gives with flows:state the state and direction get() gives, the packet counted once", function()
		local flows = nfq.flows { max = 8, state = "struct { uint32_t seen; }" }
		local out = {}
		testing.run(function(pkt)
			local state, dir = flows:state(pkt)
			if not state then
				out[#out + 1] = "none"
				return
			end
			state.seen = state.seen + 1
			local f = flows:find(pkt)
			assert.is_true(f.state == state)
			assert.equal(f.dir, dir)
			assert.equal(4, ffi.sizeof(state[0]))
			out[#out + 1] = ("%s %d %d/%d"):format(dir, state.seen, f.orig_packets, f.reply_packets)
		end, {
			udp(client, server, "a"),
			udp(server, client, "b"),
			udp({ "10.0.0.1", 40001 }, server, "c"),
			udp(client, server, "d"),
			"\69\0\0\20\0\0\0\0\64\6\0\0\10\0\0\1\10\0\0\2", -- TCP with no TCP header: cut
		})
		assert.same({ "orig 1 1/0", "reply 2 1/1", "orig 1 1/0", "orig 3 2/1", "none" }, out)
		assert.equal(2, flows:count())
	end)

	it("refuses flows:state on a table without state, a closed table or what is not a packet", function()
		local plain = nfq.flows { max = 4 }
		local flows = nfq.flows { max = 4, state = "struct { uint8_t verdict; }" }
		local errors = {}
		testing.run(function(pkt)
			for _, call in ipairs {
				function() plain:state(pkt) end,
				function() flows:state("not a packet") end,
			} do
				local ok, err = pcall(call)
				assert.is_false(ok)
				errors[#errors + 1] = (err:gsub("^[^:]+:%d+: ", ""))
			end
			flows:close()
			local ok, err = pcall(flows.state, flows, pkt)
			assert.is_false(ok)
			errors[#errors + 1] = (err:gsub("^[^:]+:%d+: ", ""))
		end, { udp(client, server, "a") })
		assert.same({
			"nfq: flows:state: the table has no state; create it with state = \"struct { ... }\", or use flows:get(pkt)",
			"nfq: flows:state expects a packet, got string \"not a packet\"",
			"nfq: this flow table is closed",
		}, errors)
	end)

	it("ends flows by timeout, eviction, FIN, RST and removal, and tells on_end why", function()
		local ends = {}
		local flows = nfq.flows {
			max = 3, timeouts = { udp = 5, tcp_close = 2 },
			on_end = function(f, why) ends[#ends + 1] = ("%s %s %d"):format(why, tostring(f), f.packets) end,
		}
		local c2, c3, c4 = { "10.0.0.1", 40002 }, { "10.0.0.1", 40003 }, { "10.0.0.1", 40004 }
		testing.run(function(pkt) flows:get(pkt) end, timed {
			{ 0, udp(client, server) },
			{ 1, tcp(c2, server, SYN, 1) }, { 1, tcp(server, c2, SYN + ACK, 9, nil, 2) },
			{ 1, tcp(c2, server, ACK, 2, nil, 10) }, { 1.5, tcp(c2, server, FIN + ACK, 2) },
			{ 1.5, tcp(server, c2, FIN + ACK, 10) },
			{ 2, tcp(c3, server, SYN, 1) }, { 2, tcp(server, c3, RST + ACK, 0, nil, 2) },
			-- all three have timed out here: they end two per packet, by class (TCP first)
			{ 6, udp(c4, server) }, { 6.5, udp(c4, server) },
		})
		assert.same({
			"fin flow tcp 10.0.0.1:40002 > 10.0.0.2:80 5",
			"rst flow tcp 10.0.0.1:40003 > 10.0.0.2:80 2",
			"timeout flow udp 10.0.0.1:40000 > 10.0.0.2:80 1",
		}, ends)
		ends = {}
		-- a full table evicts its least recently seen flow
		testing.run(function(pkt) flows:get(pkt) end, timed {
			{ 10, udp(client, server) }, { 11, udp(c2, server) }, { 12, udp(c3, server) },
			{ 12.5, udp(client, server) }, { 13, udp(c4, server) },
		})
		assert.same({ "timeout flow udp 10.0.0.1:40004 > 10.0.0.2:80 2",
			"evicted flow udp 10.0.0.1:40002 > 10.0.0.2:80 1" }, ends)
		assert.equal(3, flows:count())
		ends = {}
		local kept
		flows:each(function(f) if f.sport == 40000 then kept = f end end)
		flows:remove(kept)
		assert.same({ "removed flow udp 10.0.0.1:40000 > 10.0.0.2:80 2" }, ends)
		assert.equal(2, flows:count())
		assert.has_error(function() return kept.packets end,
			"nfq: this flow has ended (timeout, close, eviction or flows:remove): take the flow of each packet "
			.. "from flows:get(pkt) instead of keeping it")
		assert.has_error(function() return kept.state end)
		-- expire() ends idle flows without a packet (on_timer's job)
		ends = {}
		nfq._set_now(100)
		assert.equal(2, flows:expire())
		nfq._set_now(nil)
		assert.same(2, #ends)
		assert.equal(0, flows:count())
	end)

	it("starts a new flow when a SYN reuses the ports of a closed one", function()
		local ends = {}
		local flows = nfq.flows { on_end = function(f, why) ends[#ends + 1] = why .. " " .. f.packets end }
		local counts = {}
		testing.run(function(pkt) counts[#counts + 1] = flows:get(pkt).packets end, {
			tcp(client, server, SYN, 1), tcp(server, client, RST + ACK, 0, nil, 2), tcp(client, server, SYN, 77),
		})
		assert.same({ 1, 2, 1 }, counts)
		assert.same({ "rst 2" }, ends)
	end)

	describe("stream bytes", function()
		local request = "GET /index.html HTTP/1.0\r\n\r\n"

		-- The stream of the client's direction after each packet, as the script sees it.
		local function streams(packets, opts)
			local flows = nfq.flows(opts or { stream_bytes = 64 })
			local out = {}
			testing.run(function(pkt)
				local f = flows:get(pkt)
				if f.dir == "orig" then
					local s, err = f:stream_string(pkt)
					out[#out + 1] = s or err
				end
			end, packets)
			return out, flows
		end

		local function handshake(isn)
			return tcp(client, server, SYN, isn), tcp(server, client, SYN + ACK, 5000, nil, isn + 1),
				tcp(client, server, ACK, isn + 1, nil, 5001)
		end

		it("reads a request written in 1-byte segments", function()
			local packets = { handshake(1000) }
			for i = 1, #request do
				packets[#packets + 1] = tcp(client, server, PSH + ACK, 1000 + i, request:sub(i, i), 5001)
			end
			local out = streams(packets)
			assert.equal(request, out[#out])
			assert.equal(request:sub(1, 5), out[2 + 5], "SYN, ACK, then a byte each")
		end)

		it("puts segments that come out of order back in order, whatever the wrap of sequence numbers", function()
			local isn = 0xfffffff0
			local a, b, c = request:sub(1, 9), request:sub(10, 20), request:sub(21)
			local packets = { handshake(isn) }
			packets[4] = tcp(client, server, ACK, isn + 1 + 20, c, 5001)
			packets[5] = tcp(client, server, ACK, isn + 1, a, 5001)
			packets[6] = tcp(client, server, ACK, isn + 1 + 9, b, 5001)
			local out = streams(packets)
			assert.same({ "", "", "", a, request }, out)
		end)

		it("keeps the bytes first received where a retransmission overlaps them", function()
			local out = streams {
				tcp(client, server, SYN, 0),
				tcp(client, server, ACK, 1, "GET /", 1),
				tcp(client, server, ACK, 1 + 9, " HTTP/1.0", 1),
				tcp(client, server, ACK, 1 + 3, "XXpath", 1), -- overlaps "GET /" on " /"
				tcp(client, server, ACK, 1, "POST /path HTTP/1.", 1), -- all of it again, other bytes
			}
			assert.same({ "", "GET /", "GET /", "GET /path HTTP/1.0", "GET /path HTTP/1.0" }, out)
		end)

		it("starts at the first data seen when the SYN was missed, and keeps at most stream_bytes", function()
			local out = streams({
				tcp(client, server, ACK, 700, "abcdef", 1),
				tcp(client, server, ACK, 696, "WXYZab", 1), -- before the start: cut
				tcp(client, server, ACK, 706, "ghijklmnop", 1),
			}, { stream_bytes = 8 })
			assert.same({ "abcdef", "abcdef", "abcdefgh" }, out)
		end)

		it("gives stream buffers back when the flow is done with them or ends, and says when none is free", function()
			local flows = nfq.flows { stream_bytes = 16, streams = 1 }
			local out = {}
			local c2 = { "10.0.0.1", 40002 }
			testing.run(function(pkt)
				local f = flows:get(pkt)
				local data, len = f:stream(pkt, 16)
				out[#out + 1] = data and len or len
				if f.sport == 40000 and f.packets == 2 then f:stream_done() end
			end, {
				tcp(client, server, ACK, 1, "one", 1), tcp(c2, server, ACK, 1, "two", 1),
				tcp(client, server, ACK, 4, "more", 1), tcp(c2, server, ACK, 1, "two", 1),
				tcp(client, server, ACK, 8, "after", 1),
			})
			assert.equal(3, out[1])
			assert.matches("^all 1 stream buffers are in use", out[2])
			assert.equal(7, out[3])
			assert.equal(3, out[4])
			assert.equal(0, out[5], "a done stream keeps nothing")
			assert.equal(1, flows.t.streams_used)
		end)

		it("refuses what is not a stream of this table", function()
			local plain = nfq.flows {}
			local flows = nfq.flows { stream_bytes = 32 }
			local errors = {}
			local function try(fn)
				local ok, err = pcall(fn)
				errors[#errors + 1] = ok and "ok" or err:gsub("^[^:]+:%d+: ", "")
			end
			local other
			testing.run(function(pkt)
				local f = flows:get(pkt)
				if f.sport == 1 then
					other = pkt:retain()
				elseif f.proto == 17 then
					try(function() f:stream(pkt, 8) end)
				else
					try(function() plain:get(pkt):stream(pkt, 8) end)
					try(function() f:stream(pkt, 33) end)
					try(function() f:stream(other, 8) end)
				end
			end, { udp(client, server, "x"), tcp({ "10.9.9.9", 1 }, server, ACK, 1, "x", 1),
				tcp(client, server, ACK, 1, "y", 1) })
			assert.same({
				"nfq: flow:stream: this is a flow of protocol 17; stream bytes are TCP's",
				"nfq: flow:stream: the table keeps no stream bytes; create it with stream_bytes = N",
				"nfq: flow:stream: n must be an integer from 0 to 32 (the table's stream_bytes), got number 33",
				"nfq: flow:stream: the packet is not of this flow",
			}, errors)
		end)
	end)

	it("refuses bad options with a clear error", function()
		local function err_of(opts)
			local ok, err = pcall(nfq.flows, opts)
			assert.is_false(ok)
			return (err:gsub("^[^:]+:%d+: ", ""))
		end
		assert.matches("^nfq.flows: state \"struct { int x\" is not a C type the FFI can declare %(.+%); write it as",
			err_of { state = "struct { int x" })
		assert.equal('nfq.flows: state "int" must be a struct (or union) of fixed, nonzero size', err_of { state = "int" })
		assert.matches("^nfq.flows: state must be a C struct declaration", err_of { state = 5 })
		assert.equal("nfq.flows: max must be an integer from 1 to 16000000, got number 0", err_of { max = 0 })
		assert.equal("nfq.flows: unknown option 'maxx'", err_of { maxx = 1 })
		assert.matches("^nfq.flows: unknown timeout 'tcp'", err_of { timeouts = { tcp = 1 } })
		assert.equal("nfq.flows: timeouts.udp must be a positive number of seconds, got number 0",
			err_of { timeouts = { udp = 0 } })
		assert.equal("nfq.flows: on_end must be a function, got string \"x\"", err_of { on_end = "x" })
		assert.equal("nfq.flows: streams goes with stream_bytes (the bytes each stream buffer holds)",
			err_of { streams = 4 })
		assert.matches("^nfq.flows: expects a table of options", err_of("x"))
		-- a table still works after all that
		local flows = nfq.flows { max = 1 }
		assert.equal(0, flows:count())
		assert.has_error(function() flows:get("not a packet") end,
			"nfq: flows:get expects a packet, got string \"not a packet\"")
		assert.has_error(function() flows:remove(5) end, "nfq: flows:remove expects a flow, got number 5")
	end)

	it("names a table in library mode: the same name and layout give the same table", function()
		local stderr = io.stderr
		local said = {}
		io.stderr = { write = function(_, ...) said[#said + 1] = table.concat({ ... }) end } -- luacheck: ignore 122
		local a = nfq.flows { name = "spec33", state = "struct { int x; }" }
		local b = nfq.flows { name = "spec33", state = "struct {  int   x; }" }
		local c = nfq.flows { name = "spec33", state = "struct { int x; int y; }" }
		io.stderr = stderr -- luacheck: ignore 122
		testing.run(function(pkt) a:get(pkt) end, { udp(client, server) })
		assert.equal(1, b:count())
		assert.equal(0, c:count())
		assert.equal(1, #said)
		assert.matches("nfq.flows: table 'spec33' starts empty: its layout changed", said[1], 1, true)
		a:close()
		assert.equal(1, b:count(), "b still holds it")
		assert.has_error(function() a:count() end, "nfq: this flow table is closed")
		b:close()
		c:close()
		assert.equal("flow table (closed)", tostring(c))
	end)

	it("replays the fuzz corpus", function()
		local files = H.sh(("ls %s/spec/fuzz/corpus/flows | wc -l"):format(H.root))
		local out = H.sh(("cd %s && build/replay_flows spec/fuzz/corpus/flows/*"):format(H.root))
		assert.equal(tonumber(files), tonumber(out:match("replayed (%d+) inputs")))
	end)
end)

describe("flows on the per-packet path", function()
	-- get(), a counter and a field of the script's state for each packet:
	-- the Lua heap must not grow. flows_of(i) spreads the batch's packets.
	local function heap_growth(flows, port_of)
		jit.flush()
		local seen = 0
		local run_batch, keep = batch.synthetic_queue(function(pkt)
			local f = flows:get(pkt)
			local st = f.state
			st.count = st.count + 1
			if f.dir == "orig" and f.orig_packets > 0 then seen = seen + 1 end
			pkt:accept()
		end, port_of)
		local grown = batch.heap_growth(run_batch, 2000, 1000000 / batch.SIZE)
		assert.is_not_nil(keep)
		return grown, seen
	end

	it("allocates nothing over a million packets of 10 flows", function()
		local flows = nfq.flows { max = 100, state = "struct { uint32_t count; }" }
		local grown, seen = heap_growth(flows, function(i) return 8000 + i % 10 end)
		assert.is_true(grown < 16, ("the Lua heap grew by %.1f KB over 1M packets"):format(grown))
		assert.is_true(seen >= 1000000)
		assert.equal(10, flows:count())
	end)

	it("allocates nothing when flows are evicted and ended with on_end all along", function()
		local ended = 0
		local flows = nfq.flows { max = 16, state = "struct { uint32_t count; }", on_end = function() ended = ended + 1 end }
		local grown = heap_growth(flows, function(i) return 8000 + i end)
		assert.is_true(grown < 16, ("the Lua heap grew by %.1f KB over 1M packets"):format(grown))
		assert.is_true(ended > 900000)
	end)
end)

describe("flows:state on the per-packet path", function()
	it("allocates nothing over a million packets of 10 flows, nor with evictions and on_end", function()
		for _, case in ipairs {
			{ max = 100, flows = 10 },
			{ max = 16, flows = 1000000, on_end = true },
		} do
			jit.flush()
			local ended = 0
			local flows = nfq.flows {
				max = case.max, state = "struct { uint32_t count; }",
				on_end = case.on_end and function() ended = ended + 1 end or nil,
			}
			local seen = 0
			local run_batch, keep = batch.synthetic_queue(function(pkt)
				local state, dir = flows:state(pkt)
				state.count = state.count + 1
				if dir == "orig" then seen = seen + 1 end
				pkt:accept()
			end, function(i) return 8000 + i % case.flows end)
			local grown = batch.heap_growth(run_batch, 2000, 1000000 / batch.SIZE)
			assert.is_not_nil(keep)
			assert.is_true(grown < 16, ("the Lua heap grew by %.1f KB over 1M packets"):format(grown))
			assert.is_true(seen >= 1000000)
			if case.on_end then assert.is_true(ended > 900000) else assert.equal(10, flows:count()) end
		end
	end)
end)

describe("flows over a queue's batch", function()
	-- A synthetic queue whose packet in slot i goes to port_of(i), changed
	-- between batches by writing the UDP destination port in place.
	local function queue_of(callback)
		local run_batch, keep = batch.synthetic_queue(callback, function() return 9 end)
		local function set_port(i, port)
			keep.payloads[i][22], keep.payloads[i][23] = math.floor(port / 256), port % 256
		end
		return run_batch, set_port, keep
	end

	it("reads the clock once per batch: its packets share last_seen, a later batch's is later", function()
		local flows = nfq.flows { max = 1000 }
		local seen = {}
		local run_batch, set_port, keep = queue_of(function(pkt)
			seen[#seen + 1] = flows:get(pkt).last_seen
			pkt:accept()
		end)
		for i = 0, batch.SIZE - 1 do set_port(i, 1000 + i) end
		local before = nfq.now()
		run_batch()
		local t = os.clock() + 0.002
		repeat until os.clock() > t
		run_batch()
		assert.is_true(seen[1] >= before and seen[#seen] <= nfq.now())
		for i = 2, batch.SIZE do assert.equal(seen[1], seen[i]) end
		for i = batch.SIZE + 2, 2 * batch.SIZE do assert.equal(seen[batch.SIZE + 1], seen[i]) end
		assert.is_true(seen[batch.SIZE + 1] > seen[1])
		assert.is_not_nil(keep)
	end)

	it("finds the right flows in a table that prefetches each batch, also after the script changed a packet",
		function()
			local flows = nfq.flows { max = 8192 }
			local got, rewrite = {}, false
			local run_batch, set_port, keep
			run_batch, set_port, keep = queue_of(function(pkt)
				if rewrite and #got == 0 then
					-- The batch's other packets were prefetched for ports 20000 + i: now they go elsewhere.
					for i = 1, batch.SIZE - 1 do set_port(i, 20000 + batch.SIZE + i) end
				end
				local f = flows:get(pkt)
				got[#got + 1] = { f.dport, f.packets }
				pkt:accept()
			end)
			for k = 0, 79 do
				for i = 0, batch.SIZE - 1 do set_port(i, 20000 + k * batch.SIZE + i) end
				run_batch()
			end
			assert.equal(80 * batch.SIZE, flows:count())
			for i = 0, batch.SIZE - 1 do set_port(i, 20000 + i) end
			got, rewrite = {}, true
			run_batch()
			assert.same({ 20000, 2 }, got[1])
			for i = 1, batch.SIZE - 1 do assert.same({ 20000 + batch.SIZE + i, 2 }, got[i + 1]) end
			assert.equal(80 * batch.SIZE, flows:count())
			assert.is_not_nil(keep)
		end)
end)

describe("bench/flows.lua on the per-packet path", function()
	it("compiles without trace aborts in the module", function()
		local jit_util = require "jit.util"
		local vmdef = require "jit.vmdef"
		jit.flush()
		local run_batch = batch.synthetic_queue(dofile(H.root .. "/bench/flows.lua"), function(i) return 8000 + i % 10 end)
		for _ = 1, 3000 do run_batch() end
		local aborts = {}
		local function on_trace(what, _, func, pc, otr)
			local info = what == "abort" and jit_util.funcinfo(func, pc)
			if info and info.source:find("nfq", 1, true) then
				aborts[#aborts + 1] = ("%s:%s: %s"):format(info.source, tostring(info.currentline), tostring(vmdef.traceerr[otr]))
			end
		end
		jit.attach(on_trace, "trace")
		for _ = 1, 3000 do run_batch() end
		jit.attach(on_trace)
		assert.same({}, aborts)
	end)
end)

describe("flows on real connections #kernel", function()
	H.isolated_tests()

	local function daemon(script_text, env)
		local script = H.tmpfile(script_text, ".lua")
		local d = H.daemon(script .. " --queue 1", env)
		H.wait_queue_ready(1)
		return d, script
	end

	local function lines_matching(out, pattern)
		local got = {}
		for line in out:gmatch("[^\n]+") do
			if line:find(pattern) then got[#got + 1] = line end
		end
		return got
	end

	it("counts TCP and UDP flows in both directions, with TCP states, and ends them", function()
		H.sh("iptables -A OUTPUT -o lo -p tcp -m multiport --ports 7100 -j NFQUEUE --queue-num 1")
		H.sh("iptables -A OUTPUT -o lo -p udp -m multiport --ports 7101 -j NFQUEUE --queue-num 1")
		local d = daemon [[
local nfq = require "nfq"
local flows = nfq.flows {
	max = 2, timeouts = { udp = 0.5, udp_stream = 0.5, tcp_close = 0.3 },
	on_end = function(f, why) print(("end %s %s %d/%d"):format(tostring(f), why, f.orig_packets, f.reply_packets)) end,
}
return {
	on_packet = function(pkt)
		local f = flows:get(pkt)
		print(("pkt %s %s %d/%d %s %s"):format(tostring(f), f.dir, f.orig_packets, f.reply_packets,
			tostring(f.tcp_state), tostring(f.orig_bytes > 0)))
		pkt:accept()
	end,
	on_timer = function() flows:expire() end,
	timer_interval = 0.05,
}
]]
		local listener = H.tcp_listen("127.0.0.1", 7100)
		local conn = H.tcp_connect("127.0.0.1", 7100)
		local served = listener:accept(5)
		conn:send("hello")
		assert.equal("hello", served:recv(5))
		served:send("world")
		assert.equal("world", conn:recv(5))
		conn:close()
		served:close()
		listener:close()
		d:wait_output(" fin ", 10)
		local out = d:output()
		local tcp_lines = lines_matching(out, "^pkt flow tcp 127%.0%.0%.1:%d+ > 127%.0%.0%.1:7100 ")
		local f = tcp_lines[1]:match("^pkt (flow tcp %S+ > %S+) ")
		assert.equal("pkt " .. f .. " orig 1/0 handshake true", tcp_lines[1])
		assert.equal("pkt " .. f .. " reply 1/1 handshake true", tcp_lines[2])
		assert.equal("pkt " .. f .. " orig 2/1 established true", tcp_lines[3])
		assert.matches(" closed true$", tcp_lines[#tcp_lines])
		local o, r = out:match("end " .. f:gsub("%p", "%%%0") .. " fin (%d+)/(%d+)")
		assert.equal(#tcp_lines, tonumber(o) + tonumber(r), out)

		-- UDP: three clients on a table of two flows: the first is evicted, the others time out
		local rx = H.udp("127.0.0.1", 7101)
		local clients = { H.udp("127.0.0.1", 7102), H.udp("127.0.0.1", 7103), H.udp("127.0.0.1", 7104) }
		clients[1]:sendto("q1", "127.0.0.1", 7101)
		clients[1]:sendto("q2", "127.0.0.1", 7101)
		assert.equal("q1", rx:recv(5))
		assert.equal("q2", rx:recv(5))
		rx:sendto("a1", "127.0.0.1", 7102)
		assert.equal("a1", clients[1]:recv(5))
		d:wait_output("pkt flow udp 127.0.0.1:7102 > 127.0.0.1:7101 reply 2/1 nil true")
		clients[2]:sendto("q", "127.0.0.1", 7101)
		clients[3]:sendto("q", "127.0.0.1", 7101)
		d:wait_output("end flow udp 127.0.0.1:7102 > 127.0.0.1:7101 evicted 2/1")
		d:wait_output("end flow udp 127.0.0.1:7103 > 127.0.0.1:7101 timeout 1/0", 10)
		d:wait_output("end flow udp 127.0.0.1:7104 > 127.0.0.1:7101 timeout 1/0", 10)
		for _, s in ipairs(clients) do s:close() end
		rx:close()

		-- IPv6: the same flow both ways
		H.sh("ip6tables -A OUTPUT -o lo -p udp -m multiport --ports 7105 -j NFQUEUE --queue-num 1")
		local rx6, tx6 = H.udp("::1", 7105), H.udp("::1", 7106)
		tx6:sendto("q6", "::1", 7105)
		assert.equal("q6", rx6:recv(5))
		rx6:sendto("a6", "::1", 7106)
		assert.equal("a6", tx6:recv(5))
		d:wait_output("pkt flow udp [::1]:7106 > [::1]:7105 reply 1/1 nil true")
		rx6:close()
		tx6:close()
	end)

	it("hands a named table to the next version on SIGHUP, and starts afresh when its layout changed", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7110 -j NFQUEUE --queue-num 1")
		local version = [[
local nfq = require "nfq"
local flows = nfq.flows { name = "conns", max = 100, state = "struct { uint32_t seen; %s }" }
return function(pkt)
	local f = flows:get(pkt)
	f.state.seen = f.state.seen + 1
	print(("version %s: packets=%%d seen=%%d"):format(f.packets, f.state.seen))
	pkt:accept()
end
]]
		local d, script = daemon(version:format("", "A"))
		local rx, tx = H.udp("127.0.0.1", 7110), H.udp("127.0.0.1", 7111)
		local function send_and_wait(line)
			tx:sendto("x", "127.0.0.1", 7110)
			assert.equal("x", rx:recv(5))
			d:wait_output(line)
		end
		local function reload(text, done)
			local f = assert(io.open(script, "w"))
			f:write(text)
			f:close()
			d:signal("HUP")
			d:wait_output(done)
		end
		for i = 1, 3 do send_and_wait(("version A: packets=%d seen=%d"):format(i, i)) end
		reload(version:format("", "B"), "version 2 runs now")
		assert.matches("queue 1: nfq.flows: table 'conns' handed over with its 1 flows", d:output(), 1, true)
		send_and_wait("version B: packets=4 seen=4")
		reload(version:format("uint32_t more;", "C"), "version 3 runs now")
		assert.matches("nfqlua: warning: queue 1: nfq.flows: table 'conns' starts empty: its layout changed", d:output(),
			1, true)
		send_and_wait("version C: packets=1 seen=1")
		-- a failed reload leaves the running version and its table as they are
		reload("return nil +", "version 3 keeps running")
		send_and_wait("version C: packets=2 seen=2")
		rx:close()
		tx:close()
	end)

	-- A TCP client that writes its request in pieces, TCP_NODELAY set, so that
	-- each write leaves as its own segment.
	local IPPROTO_TCP, TCP_NODELAY = 6, 1
	local function write_in_pieces(conn, pieces)
		C.setsockopt(conn.fd, IPPROTO_TCP, TCP_NODELAY, ffi.new("int[1]", 1), 4)
		for _, piece in ipairs(pieces) do
			conn:send(piece)
			H.sleep(0.01)
		end
	end

	local function read_all(sock, want)
		local got = ""
		while #got < #want do
			local data = sock:recv(5)
			if not data or data == "" then break end
			got = got .. data
		end
		return got
	end

	local request = "GET /index.html HTTP/1.0\r\nHost: a\r\n\r\n"
	local shown = request:gsub("\r", "\\r"):gsub("\n", "\\n")

	it("reads a request written in 1-byte segments whole, and blocks one by its words (flow_counter.lua)", function()
		H.sh("iptables -A INPUT -i lo -p tcp -m multiport --ports 7120 -j NFQUEUE --queue-num 1")
		local d = H.daemon(H.root .. "/scripts/examples/flow_counter.lua --queue 1", "NFQ_FLOW_BLOCK=secret")
		H.wait_queue_ready(1)
		local listener = H.tcp_listen("127.0.0.1", 7120)
		local conn = H.tcp_connect("127.0.0.1", 7120)
		local served = listener:accept(5)
		local pieces = {}
		for i = 1, #request do pieces[i] = request:sub(i, i) end
		write_in_pieces(conn, pieces)
		assert.equal(request, read_all(served, request))
		d:wait_output("request flow tcp ")
		assert.matches("request flow tcp 127.0.0.1:%d+ > 127.0.0.1:7120: " .. shown:gsub("%p", "%%%0") .. "\n",
			d:output())
		conn:close()
		served:close()

		local blocked = "GET /secret HTTP/1.0\r\n\r\n"
		conn = H.tcp_connect("127.0.0.1", 7120)
		served = listener:accept(5)
		write_in_pieces(conn, { "GET /se", "cret HTTP/1.0\r\n\r\n" })
		d:wait_output("blocked flow tcp ")
		assert.equal("GET /se", read_all(served, blocked), "the segment that completed the word is dropped")
		conn:close()
		served:close()
		listener:close()
	end)

	it("reads a request sent as 3 overlapping segments, last first (nfq.tcp_split ahead of flow_counter.lua)", function()
		-- queue 2 drops the client's first data segment and sends it again as three
		-- pieces, each overlapping the one before by 3 bytes, the last first; the
		-- pieces carry the send mark past queue 2, and queue 1 reads them on INPUT
		H.sh("iptables -A OUTPUT -o lo -p tcp --dport 7140 -m mark --mark 0x1/0x1 -j RETURN")
		H.sh("iptables -A OUTPUT -o lo -p tcp --dport 7140 --tcp-flags PSH PSH -j NFQUEUE --queue-num 2")
		H.sh("iptables -A INPUT -i lo -p tcp -m multiport --ports 7140 -j NFQUEUE --queue-num 1")
		local split = H.tmpfile([[
local nfq = require "nfq"
local done = {}
return function(pkt)
	local tcp = pkt:tcp()
	if done[tcp.sport] then return pkt:accept() end
	done[tcp.sport] = true
	local last, middle, first = nfq.tcp_split(pkt, 9, 27, { overlap = 3, reverse = true })
	assert(nfq.send(last))
	assert(nfq.send(middle))
	assert(nfq.send(first))
	print("split")
	pkt:drop()
end
]], ".lua")
		local splitter = H.daemon(split .. " --queue 2 --no-gso --send --send-mark 0x1/0x1")
		local d = H.daemon(H.root .. "/scripts/examples/flow_counter.lua --queue 1")
		H.wait_queue_ready(2)
		H.wait_queue_ready(1)
		local listener = H.tcp_listen("127.0.0.1", 7140)
		local conn = H.tcp_connect("127.0.0.1", 7140)
		local served = listener:accept(5)
		write_in_pieces(conn, { request })
		assert.equal(request, read_all(served, request))
		splitter:wait_output("split")
		d:wait_output("request flow tcp ")
		assert.matches("request flow tcp 127.0.0.1:%d+ > 127.0.0.1:7140: " .. shown:gsub("%p", "%%%0") .. "\n",
			d:output())
		conn:close()
		served:close()
		listener:close()
		splitter:stop()
	end)

	it("reads a request whose segments a first queue reordered (ahead of flow_counter.lua)", function()
		-- queue 2 swaps the client's data segments in pairs on OUTPUT (one
		-- left alone goes after 50 ms); queue 1 reads them on INPUT
		H.sh("iptables -A OUTPUT -o lo -p tcp --dport 7130 --tcp-flags PSH PSH -j NFQUEUE --queue-num 2")
		H.sh("iptables -A INPUT -i lo -p tcp -m multiport --ports 7130 -j NFQUEUE --queue-num 1")
		local swap = H.tmpfile([[
local nfq = require "nfq"
local held, since
return {
	on_packet = function(pkt)
		if not held then
			held, since = pkt:retain(), nfq.now()
			return
		end
		pkt:accept()
		held:accept()
		held = nil
		print("swapped")
	end,
	on_timer = function()
		if held and nfq.now() - since > 0.05 then
			held:accept()
			held = nil
		end
	end,
	timer_interval = 0.01,
}
]], ".lua")
		local reorder = H.daemon(swap .. " --queue 2")
		local d = H.daemon(H.root .. "/scripts/examples/flow_counter.lua --queue 1")
		H.wait_queue_ready(2)
		H.wait_queue_ready(1)
		local listener = H.tcp_listen("127.0.0.1", 7130)
		local conn = H.tcp_connect("127.0.0.1", 7130)
		local served = listener:accept(5)
		write_in_pieces(conn, { "GET /ind", "ex.html HTTP/1.0\r\n", "Host: ", "a\r\n\r\n" })
		assert.equal(request, read_all(served, request))
		d:wait_output("request flow tcp ")
		assert.matches("request flow tcp 127.0.0.1:%d+ > 127.0.0.1:7130: " .. shown:gsub("%p", "%%%0") .. "\n",
			d:output())
		assert.matches("swapped", reorder:output(), 1, true)
		conn:close()
		served:close()
		listener:close()
		reorder:stop()
	end)
end)

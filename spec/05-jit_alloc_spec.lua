-- The per-packet path: JIT-compiled without trace aborts, and allocating
-- nothing. Batches of real IPv4/UDP payloads go through the module's own
-- dispatch and verdict code; the verdict messages go to a queue number that
-- nobody bound, so the kernel refuses them and no traffic is touched.
-- The jit.attach handler below uses these locals, no globals: under busted,
-- a global looked up inside a trace event failed ("attempt to call global
-- 'ipairs' (a nil value)") and left the test's own globals broken after it.
local ipairs, type, tostring = ipairs, type, tostring
local ffi = require "ffi"
local jit_util = require "jit.util"
local vmdef = require "jit.vmdef"
local nfq = require "nfq"
local testing = require "nfq.testing"
local H = require "helpers.net"
local batch = require "helpers.batch"

local BATCH = batch.SIZE

local function synthetic_queue(callback)
	return batch.synthetic_queue(callback, function(i) return i % 4 == 0 and 5555 or 8000 + i end)
end

local function load_filter(path, env)
	-- examples read their settings from the environment: fake it while one loads
	local getenv = os.getenv
	local fake = stub(os, "getenv", function(name)
		if env and env[name] ~= nil then return env[name] end
		return getenv(name)
	end)
	local f = assert(loadfile(path))()
	fake:revert()
	return type(f) == "table" and f.on_packet or f
end

describe("per-packet path", function()
	-- Each measurement starts from no traces: a trace of the dispatch loop
	-- that an earlier spec file recorded for its own callback would take
	-- this one through a side exit, where the packet object is allocated.
	it("allocates nothing over a million packets", function()
		jit.flush()
		local seen = 0
		local run_batch, keep = synthetic_queue(function(pkt)
			local udp = pkt:udp()
			if udp and udp.dport == 5555 then
				pkt:drop()
			else
				seen = seen + 1
				pkt:set_mark(7)
				pkt:accept()
			end
		end)
		local grown = batch.heap_growth(run_batch, 2000, 1000000 / BATCH)
		assert.is_true(grown < 16, ("the Lua heap grew by %.1f KB over 1M packets"):format(grown))
		assert.is_true(seen > 0)
		assert.is_not_nil(keep)
	end)

	-- Packet buffers: copies edited and sent (to a sink here), and pieces
	-- made by the split and fragment builders, all from the pool.
	local sink = ffi.new("uint8_t[65536]")
	local sent = 0
	local function send(b)
		local ptr, len = b:view()
		ffi.copy(sink, ptr, len)
		sent = sent + 1
	end
	local tcp_segment = testing.packet { proto = "tcp", payload = ("x"):rep(100), tcp_flags = 0x18 }
	local buffer_filters = {
		["drops every packet and sends two altered copies"] = function(pkt)
			local a = pkt:copy()
			a:ip().ttl = 10
			a:fix_checksums()
			send(a)
			local b = pkt:copy()
			b:ip().ttl = 20
			b:udp().dport = 443
			b:fix_checksums()
			send(b)
			pkt:drop()
		end,
		["splits and fragments"] = function(pkt)
			local b = pkt:copy()
			b:ip().ttl = 10
			b:fix_checksums()
			local f1, f2 = nfq.ip_fragment(b, 8)
			send(f1)
			send(f2)
			local s1, s2, s3 = nfq.tcp_split(tcp_segment, 10, 50)
			send(s1)
			send(s2)
			send(s3)
			pkt:accept()
		end,
	}

	for name, filter in pairs(buffer_filters) do
		it("allocates nothing over a million packets for a filter that " .. name, function()
			jit.flush()
			local run_batch, keep = synthetic_queue(filter)
			for _ = 1, 2000 do run_batch() end
			collectgarbage()
			collectgarbage()
			local allocated = nfq._buffer_pool.allocated
			sent = 0
			collectgarbage("stop")
			local before = collectgarbage("count")
			for _ = 1, 1000000 / BATCH do run_batch() end
			local grown = collectgarbage("count") - before
			collectgarbage("restart")
			assert.is_true(grown < 16, ("the Lua heap grew by %.1f KB over 1M packets"):format(grown))
			assert.is_true(sent >= 2000000)
			assert.equal(allocated, nfq._buffer_pool.allocated, "the buffer pool grew")
			assert.is_not_nil(keep)
		end)
	end

	local function trace_aborts(sources)
		local aborts = {}
		return aborts, function(what, _, func, pc, otr, oex)
			local loc = what == "abort" and jit_util.funcinfo(func, pc).source or ""
			local ours = loc:find("/lua/nfq", 1, true) or loc:find("^@lua/")
			for _, source in ipairs(sources) do ours = ours or loc:find(source, 1, true) end
			-- only our code: busted's own functions abort traces too
			if ours then
				local reason = vmdef.traceerr[otr]
				if type(oex) == "number" and reason then reason = reason:format(oex) end
				local line = jit_util.funcinfo(func, pc).currentline
				aborts[#aborts + 1] = ("%s:%s: %s"):format(loc, tostring(line), tostring(reason))
			end
		end
	end

	for name, filter in pairs(buffer_filters) do
		it("compiles a filter that " .. name .. " without trace aborts", function()
			jit.flush()
			local aborts, on_trace = trace_aborts { "05-jit_alloc_spec.lua" }
			local run_batch = synthetic_queue(filter)
			for _ = 1, 3000 do run_batch() end
			jit.attach(on_trace, "trace")
			for _ = 1, 3000 do run_batch() end
			jit.attach(on_trace)
			assert.same({}, aborts)
		end)
	end

	local fast_filters = {
		{ "scripts/examples/accept_all.lua" },
		{ "scripts/examples/port_firewall.lua", { NFQ_BLOCKED_PORTS = "5555" } },
		{ "scripts/examples/mark_by_uid.lua" },
		{ "scripts/examples/split_tcp.lua" },
		{ "bench/filter.lua" },
	}
	for _, f in ipairs(fast_filters) do
		it("compiles " .. f[1] .. " without trace aborts", function()
			local path = H.root .. "/" .. f[1]
			if not io.open(path) then
				pending(f[1] .. " is not there yet")
				return
			end
			jit.flush()
			local aborts, on_trace = trace_aborts { f[1] }
			-- Warm-up may abort a trace or two while LuaJIT picks its roots;
			-- the steady packet loop must then run without any abort.
			local run_batch = synthetic_queue(load_filter(path, f[2]))
			for _ = 1, 3000 do run_batch() end
			jit.attach(on_trace, "trace")
			for _ = 1, 3000 do run_batch() end
			jit.attach(on_trace)
			assert.same({}, aborts)
		end)
	end
end)

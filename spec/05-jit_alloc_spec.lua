-- The per-packet path: JIT-compiled without trace aborts, and allocating
-- nothing. Batches of real IPv4/UDP payloads go through the module's own
-- dispatch and verdict code; the verdict messages go to a queue number that
-- nobody bound, so the kernel refuses them and no traffic is touched.
local jit_util = require "jit.util"
local vmdef = require "jit.vmdef"
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
	it("allocates nothing over a million packets", function()
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
		for _ = 1, 2000 do run_batch() end
		collectgarbage()
		collectgarbage()
		collectgarbage("stop")
		local before = collectgarbage("count")
		for _ = 1, 1000000 / BATCH do run_batch() end
		local grown = collectgarbage("count") - before
		collectgarbage("restart")
		assert.is_true(grown < 16, ("the Lua heap grew by %.1f KB over 1M packets"):format(grown))
		assert.is_true(seen > 0)
		assert.is_not_nil(keep)
	end)

	local fast_filters = {
		{ "scripts/examples/accept_all.lua" },
		{ "scripts/examples/port_firewall.lua", { NFQ_BLOCKED_PORTS = "5555" } },
		{ "scripts/examples/mark_by_uid.lua" },
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
			local aborts = {}
			local function on_trace(what, _, func, pc, otr, oex)
				local loc = what == "abort" and jit_util.funcinfo(func, pc).source or ""
				-- only our code: busted's own functions abort traces too
				if loc:find("/lua/nfq", 1, true) or loc:find(f[1], 1, true) or loc:find("^@lua/") then
					local reason = vmdef.traceerr[otr]
					if type(oex) == "number" and reason then reason = reason:format(oex) end
					local line = jit_util.funcinfo(func, pc).currentline
					aborts[#aborts + 1] = ("%s:%s: %s"):format(loc, tostring(line), tostring(reason))
				end
			end
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

-- Every Lua-facing function fed wrong types, negative, huge and NaN numbers,
-- empty and 70 kB strings, nil and tables: each call raises an error or
-- returns nil, err, and the process never crashes.
local nfq = require "nfq"
local testing = require "nfq.testing"

local bad_values = { nil, false, true, -1, -2^31, 2^32, 2^53, 1e308, -1e308, 0 / 0, math.huge, 1.5,
	"", "x", string.rep("z", 70000), {}, { 1, 2 }, print, coroutine.create(print) }
local n_bad = 19

local function each_bad(fn)
	for i = 1, n_bad do fn(bad_values[i]) end
end

describe("bad arguments", function()
	it("never crash the packet methods, and errors are errors", function()
		local calls, errors = 0, 0
		local methods = { "set_payload", "set_mark", "queue", "set_connmark", "get_payload", "get_payload_len",
			"get_mark", "get_hw", "get_timestamp", "view", "ip", "ip6", "udp", "tcp", "icmp", "transport",
			"get_indev_name", "get_l2hdr", "fix_checksums" }
		local results = testing.run(function(pkt)
			for _, m in ipairs(methods) do
				each_bad(function(v)
					calls = calls + 1
					local ok = pcall(pkt[m], pkt, v, v)
					if not ok then errors = errors + 1 end
				end)
			end
			for _, v in ipairs { 0, 65535, "not ip at all", string.rep("\69", 70000) } do
				pcall(pkt.set_payload, pkt, v)
				pcall(pkt.fix_checksums, pkt)
				pcall(pkt.udp, pkt)
			end
			-- any verdict now, even with what was set above
			pcall(pkt.accept, pkt)
		end, { testing.packet { payload = "x" } })
		assert.equal(#methods * n_bad, calls)
		assert.is_true(errors > 0)
		assert.equal(1, #results)
		-- set_payload refuses 70 kB, and a payload that is not a string
		local r = testing.run(function(pkt)
			assert.has_error(function() pkt:set_payload(string.rep("z", 70000)) end,
				"nfq: a payload of 70000 bytes is larger than a verdict can carry (65531)")
			assert.has_error(function() pkt:set_payload({}) end,
				"nfq: set_payload expects a string or a packet buffer, got table")
			assert.has_error(function() pkt:set_mark(0 / 0) end)
			assert.has_error(function() pkt:set_mark(-1) end)
			assert.has_error(function() pkt:set_mark(2 ^ 32) end)
			assert.has_error(function() pkt:queue(65536) end)
			pkt:drop()
		end, { testing.packet {} })
		assert.equal("drop", r[1].verdict)
	end)

	it("ignore what a callback returns: garbage gets the fallback verdict like nothing", function()
		local r = testing.run(function() return {}, "drop", 0 / 0, print end, { testing.packet {} }, { fallback = "drop" })
		assert.same({ "drop", true }, { r[1].verdict, r[1].fallback })
	end)

	it("never crash the queue functions #kernel", function()
		-- bind may succeed with a good value: only in a namespace of our own.
		require("helpers.net").fresh_netns()
		each_bad(function(v)
			pcall(nfq.new, v)
			pcall(nfq.new, { sockfd = v })
			pcall(nfq.ntop, v)
			pcall(nfq.ifname, v)
			pcall(nfq.csum_replace16, v, v, v)
			local q = nfq.new()
			pcall(q.bind, q, v, v, v)
			pcall(q.bind, q, 1, print, { max_len = v })
			pcall(q.bind, q, 1, print, { range = v, mode = v })
			pcall(q.bind, q, 1, print, { fallback = v, gso = v })
			pcall(q.set_callback, q, v)
			pcall(q.run, q, false)
			q:close()
			pcall(q.run, q, false)
			pcall(q.bind, q, 1, print)
		end)
		assert.is_true(true, "still alive")
	end)
end)

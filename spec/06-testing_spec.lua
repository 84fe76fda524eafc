-- nfq.testing: every example script, unit-tested without a kernel.
local testing = require "nfq.testing"
local H = require "helpers.net"

local function example(name) return H.root .. "/scripts/examples/" .. name end

-- Examples read settings from the environment: fake it for one run.
local function with_env(env, fn)
	local getenv = os.getenv
	local fake = stub(os, "getenv", function(k) if env[k] ~= nil then return env[k] end return getenv(k) end)
	local ok, err = pcall(fn)
	fake:revert()
	assert(ok, err)
end

-- Run fn with what examples print or write to stderr recorded instead of
-- written: fn's result and the strings, in order.
local function output_of(fn)
	local out, stderr = {}, io.stderr
	local fake = stub(_G, "print", function(line) out[#out + 1] = line end)
	io.stderr = { write = function(_, s) out[#out + 1] = s end } -- luacheck: ignore 122
	local ok, r = pcall(fn)
	fake:revert()
	io.stderr = stderr -- luacheck: ignore 122
	assert(ok, r)
	return r, out
end

describe("nfq.testing", function()
	it("builds packets with correct checksums", function()
		local p = testing.packet {
			proto = "udp", src = "10.1.2.3", dst = "10.9.8.7", sport = 1000, dport = 53, payload = "abc",
		}
		assert.equal(31, #p)
		local nfq = require "nfq"
		local ffi = require "ffi"
		local copy = ffi.new("uint8_t[?]", #p)
		ffi.copy(copy, p, #p)
		nfq._C.nfq_fix_checksums(copy, #p)
		assert.equal(p, ffi.string(copy, #p), "already correct")
		assert.equal(60, #testing.packet { proto = "tcp", src = "fd00::1", dst = "fd00::2" })
		assert.has_error(function() testing.packet { proto = "sctpx" } end)
	end)

	it("reports verdicts, marks, rewrites, repeats and fallbacks", function()
		local p = testing.packet { payload = "x" }
		local r = testing.run(function(pkt)
			local data = pkt:get_payload()
			if pkt.id == 1 then pkt:set_mark(5) pkt:accept()
			elseif pkt.id == 2 then pkt:drop()
			elseif pkt.id == 3 then pkt:set_payload(data .. "y") pkt:fix_checksums() pkt:accept()
			elseif pkt.id == 4 and pkt.mark == 0 then pkt:set_mark(9) pkt["repeat"](pkt)
			elseif pkt.id == 5 then pkt:queue(3)
			end
		end, { p, p, p, p, p, p })
		local by = r.by_id
		assert.same({ "accept", 5 }, { by[1].verdict, by[1].mark })
		assert.equal("drop", by[2].verdict)
		assert.equal(#p + 1, #by[3].payload)
		assert.same({ "accept", 1, true }, { by[4].verdict, by[4].repeats, by[4].fallback })
		assert.same({ "queue", 3 }, { by[5].verdict, by[5].queue_num })
		assert.is_true(by[6].fallback)
	end)

	it("drop_word.lua drops by content and says so on start and stop", function()
		local r, written = output_of(function()
			return testing.run(example("drop_word.lua"), {
				testing.packet { payload = "fine" }, testing.packet { payload = "please DROP" } })
		end)
		assert.same({ "accept", "drop" }, { r.by_id[1].verdict, r.by_id[2].verdict })
		assert.same({ 'drop_word: dropping packets that contain "DROP"\n', "drop_word: dropped 1 packets\n" }, written)
	end)

	it("port_firewall.lua blocks its ports for TCP and UDP", function()
		with_env({ NFQ_BLOCKED_PORTS = "23,5555" }, function()
			local r = testing.run(example("port_firewall.lua"), {
				testing.packet { proto = "tcp", dport = 23 }, testing.packet { proto = "udp", dport = 5555 },
				testing.packet { proto = "udp", dport = 53 }, testing.packet { proto = "icmp" } })
			assert.same({ "drop", "drop", "accept", "accept" },
				{ r.by_id[1].verdict, r.by_id[2].verdict, r.by_id[3].verdict, r.by_id[4].verdict })
		end)
	end)

	it("dns_filter.lua drops queries for blocked names", function()
		with_env({ NFQ_BLOCKED_DOMAINS = "ads.example" }, function()
			local function query(name)
				return testing.packet { dport = 53, payload = H.dns_query(name) }
			end
			local r, printed = output_of(function()
				return testing.run(example("dns_filter.lua"), { query("x.ads.example"), query("good.example"),
					testing.packet { dport = 53, payload = "\0\1" } })
			end)
			assert.same({ "drop", "accept", "accept" }, { r.by_id[1].verdict, r.by_id[2].verdict, r.by_id[3].verdict })
			assert.same({ "blocked DNS query for x.ads.example" }, printed)
		end)
	end)

	it("rewrite_payload.lua rewrites and fixes checksums", function()
		local r = testing.run(example("rewrite_payload.lua"), { testing.packet { payload = "hello there" } })
		assert.equal(testing.packet { payload = "goodbye there" }, r[1].payload)
	end)

	it("mark_by_uid.lua marks by socket owner only when the kernel says who", function()
		local r = testing.run(example("mark_by_uid.lua"), { testing.packet {} })
		assert.same({ "accept", nil }, { r[1].verdict, r[1].mark })
	end)

	it("connmark_classifier.lua classifies by port", function()
		-- set_connmark needs a conntrack queue; offline queues take the flag as given.
		local nfq = require "nfq"
		local r = testing.run(function(pkt)
			pkt.p.queue.flags = nfq._C.NFQ_FLAG_CONNTRACK
			return dofile(example("connmark_classifier.lua"))(pkt)
		end, { testing.packet { dport = 53 }, testing.packet { dport = 6666 }, testing.packet { dport = 8080 } })
		assert.same({ 1, 2, 3 }, { r.by_id[1].connmark, r.by_id[2].connmark, r.by_id[3].connmark })
		assert.equal("drop", r.by_id[2].verdict)
	end)

	it("reorder.lua swaps pairs, and a lone last packet gets the fallback", function()
		local p = testing.packet {}
		local r = testing.run(example("reorder.lua"), { p, p, p })
		assert.same({ 2, 1, 3 }, { r[1].id, r[2].id, r[3].id })
		assert.is_true(r[3].fallback)
	end)

	it("delay.lua holds each packet for its delay on the packets' clock, on_timer releasing them", function()
		local times = { 0, 0.010, 0.500, 0.502 }
		local packets = {}
		for i, t in ipairs(times) do
			packets[i] = { bytes = testing.packet { payload = "p" .. i }, time = 1000 + t }
		end
		local r
		with_env({ NFQ_DELAY_MS = "100" }, function() r = testing.run(example("delay.lua"), packets) end)
		assert.same({ 1, 2, 3, 4 }, { r[1].id, r[2].id, r[3].id, r[4].id })
		for i, res in ipairs(r) do
			assert.equal("accept", res.verdict)
			assert.is_false(res.fallback)
			-- Released by the first on_timer (every 5 ms) at or after the delay.
			local held = res.time - packets[i].time
			assert.is_true(held >= 0.100 - 1e-9 and held < 0.105 + 1e-9, "packet " .. i .. " held " .. held)
		end
	end)

	it("runs scripts on the packets' clock and gives the real clock back", function()
		local nfq = require "nfq"
		local seen = {}
		local r = testing.run(function(pkt)
			seen[#seen + 1] = nfq.now()
			pkt:accept()
		end, { { bytes = testing.packet {}, time = 5 }, testing.packet {}, { bytes = testing.packet {}, time = 7.25 } })
		assert.same({ 5, 5, 7.25 }, seen)
		assert.same({ 5, 5, 7.25 }, { r[1].time, r[2].time, r[3].time })
		local before = nfq.now()
		assert.is_true(before ~= 7.25 and nfq.now() >= before)
	end)

	it("gives held packets the fallback when on_timer never releases them", function()
		local r = testing.run({
			timer_interval = 0.5,
			on_packet = function(pkt) pkt:retain() end,
			on_timer = function() end,
		}, { testing.packet {} })
		assert.is_true(r[1].fallback)
		assert.is_true(r[1].time >= 60)
	end)

	it("runs a table script's on_start before its packets and on_stop after them, as the daemon does", function()
		local calls = {}
		local r = testing.run({
			on_start = function() calls[#calls + 1] = "start" end,
			on_packet = function(pkt) calls[#calls + 1] = "packet " .. pkt.id pkt:accept() end,
			on_stop = function() calls[#calls + 1] = "stop" end,
		}, { testing.packet {}, testing.packet {} })
		assert.equal(2, #r)
		assert.same({ "start", "packet 1", "packet 2", "stop" }, calls)
	end)

	it("takes a packet's hook by name or number, and names a bad one", function()
		local hooks = {}
		testing.run(function(pkt) hooks[#hooks + 1] = pkt.hook; pkt:accept() end, {
			{ bytes = testing.packet {}, hook = "output" }, { bytes = testing.packet {}, hook = 2 }, testing.packet {},
		}, { hook = "postrouting" })
		assert.same({ 3, 2, 4 }, hooks)
		assert.has_error(function()
			testing.run(function(pkt) pkt:accept() end, { { bytes = testing.packet {}, hook = "outptu" } })
		end, "nfq.testing: unknown hook outptu (prerouting, input, forward, output, postrouting or 0-4)")
	end)

	it("accept_all.lua accepts; print_and_accept.lua describes the packet and accepts", function()
		assert.equal("accept", testing.run(example("accept_all.lua"), { testing.packet {} })[1].verdict)
		local r, printed = output_of(function()
			return testing.run(example("print_and_accept.lua"), { testing.packet {} })
		end)
		assert.equal("accept", r[1].verdict)
		assert.same({ "#1 INPUT       UDP packet, 28 bytes" }, printed)
	end)
end)

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
			nfq._c_packet(pkt).queue.flags = nfq._C.NFQ_FLAG_CONNTRACK
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
		end, "nfq.testing: packets[1].hook must be prerouting, input, forward, output, postrouting or 0-4, "
			.. 'got string "outptu"')
		assert.has_error(function()
			testing.run(function(pkt) pkt:accept() end, { testing.packet {} }, { hook = 5 })
		end, "nfq.testing: opts.hook must be prerouting, input, forward, output, postrouting or 0-4, got number 5")
	end)

	it("reports a queue verdict with bypass, the verdict being the low byte as for the kernel", function()
		local r = testing.run(function(pkt)
			if pkt.id == 1 then pkt:queue(5, true) else pkt:queue(65535) end
		end, { testing.packet {}, testing.packet {} })
		assert.same({ "queue", 5, true }, { r[1].verdict, r[1].queue_num, r[1].bypass })
		assert.same({ "queue", 65535 }, { r[2].verdict, r[2].queue_num })
		assert.is_nil(r[2].bypass)
	end)

	it("runs on_timer for at most a minute of a long gap in the packets' clock, then once at its end", function()
		local ticks, at, held = 0, {}, nil
		local r = testing.run({
			timer_interval = 0.001,
			on_packet = function(pkt) if pkt.id == 1 then held = pkt:retain() else ticks = #at pkt:accept() end end,
			on_timer = function() at[#at + 1] = require("nfq").now() end,
		}, { { bytes = testing.packet {}, time = 0 }, { bytes = testing.packet {}, time = 1700000000 } })
		assert.is_true(ticks <= 60 / 0.001 + 1, ticks .. " calls before the second packet")
		assert.equal(1700000000, at[ticks], "the last call before it is at the end of the gap")
		assert.is_true(math.abs(at[ticks - 1] - 60) < 0.01, "the one before ends the first minute: " .. at[ticks - 1])
		assert.is_true(r.timer_skipped > 1699999000 / 0.001, "skipped " .. r.timer_skipped)
		assert.same({ 2, 1 }, { r[1].id, r[2].id })
		assert.is_true(r[2].fallback)
		assert.is_not_nil(held)
		assert.equal(0, testing.run(function(pkt) pkt:accept() end, { testing.packet {} }).timer_skipped)
	end)

	describe("checks its inputs and says what is wrong", function()
		local accept = function(pkt) pkt:accept() end
		local function run_error(packets, opts, script)
			local ok, err = pcall(testing.run, script or accept, packets, opts)
			assert.is_false(ok, "no error")
			return err
		end
		local function packet_error(desc)
			local ok, err = pcall(testing.packet, desc)
			assert.is_false(ok, "no error")
			return err
		end

		it("in the packets given to run", function()
			local p = testing.packet {}
			assert.matches('packets%[2%] must be the bytes of a packet %(a string, as testing.packet{} makes%) or a table '
				.. '{ bytes = ..., time, mark, hook, hw }, got number 5$', run_error { p, 5 })
			assert.matches("packets%[1%].mark must be an integer from 0 to 4294967295, got number %-1$",
				run_error { { bytes = p, mark = -1 } })
			assert.matches('packets%[1%].mark must be an integer from 0 to 4294967295, got string "7"$',
				run_error { { bytes = p, mark = "7" } })
			assert.matches("packets%[1%].bytes must be a string of 1 to 65535 bytes, got 65536 bytes$",
				run_error { { bytes = string.rep("E", 65536) } })
			assert.matches("packets%[1%].bytes must be a string of 1 to 65535 bytes, got nil$", run_error { { mark = 1 } })
			assert.matches("packets%[1%]: unknown field byets %(the fields are bytes, hook, hw, mark, time%)$",
				run_error { { byets = p } })
			assert.matches("packets%[1%].time must be a number of seconds, got number nan$",
				run_error { { bytes = p, time = 0 / 0 } })
			assert.matches("packets%[1%].hw must be a hardware address of 1 to 8 bytes, got string",
				run_error { { bytes = p, hw = "123456789" } })
			assert.matches("run: packets must be a list of packets, got string", run_error(p))
		end)

		it("in run's script and options", function()
			local p = { testing.packet {} }
			assert.matches("run: the script must be a path, a callback or a table with on_packet, got number 5$",
				run_error(p, nil, 5))
			assert.matches([[run: the script table's on_timer must be a function, got string "soon"$]],
				run_error(p, nil, { on_packet = accept, on_timer = "soon" }))
			assert.matches("run: timer_interval must be a number of seconds, at least 0.001, got number 0$",
				run_error(p, nil, { on_packet = accept, on_timer = accept, timer_interval = 0 }))
			assert.matches('opts.fallback must be "accept" or "drop", got string "reject"$',
				run_error(p, { fallback = "reject" }))
			assert.matches("run: opts: unknown field hooks %(the fields are fallback, hook, mode, range, send, send_mark, "
				.. "send_mask%)$", run_error(p, { hooks = "input" }))
			assert.matches("opts.range must be an integer from 1 to 65535, got number 0$", run_error(p, { range = 0 }))
		end)

		it("in testing.packet's fields", function()
			assert.matches("packet: dport must be an integer from 0 to 65535, got number 70000$",
				packet_error { dport = 70000 })
			assert.matches('packet: sport must be an integer from 0 to 65535, got string "53"$',
				packet_error { sport = "53" })
			assert.matches("packet: unknown field dprot %(the fields are ack, dport, dst, icmp_code, icmp_type, id, "
				.. "payload, proto, seq, sport, src, tcp_flags, ttl, version%)$", packet_error { dprot = 53 })
			assert.matches('packet: dst must be an IPv4 address %(as the other fields make the packet IPv4%), '
				.. 'got string "10.0.0.300"$', packet_error { dst = "10.0.0.300" })
			assert.matches('packet: src must be an IPv6 address %(as the other fields make the packet IPv6%), '
				.. 'got string "10.0.0.1"$', packet_error { src = "10.0.0.1", dst = "fd00::2" })
			for _, bad in ipairs { "fd00::1::2", "fd00::12345", "1:2:3:4:5:6:7", "fd00::g" } do
				assert.matches('packet: dst must be an IPv6 address .* got string "' .. bad:gsub("%p", "%%%0") .. '"$',
					packet_error { dst = bad })
			end
			assert.matches("packet: dst must be an IPv4 address .* got number 10$", packet_error { dst = 10 })
			assert.matches("packet: a payload of 65508 bytes makes an IPv4 packet of 65536 bytes, over the 65535 an IP "
				.. "packet can have$", packet_error { payload = string.rep("x", 65508) })
			assert.matches("packet: version must be 4 or 6, got number 5$", packet_error { version = 5 })
			assert.matches("packet: proto must be udp, tcp, icmp, icmpv6 or a protocol number from 0 to 255, "
				.. 'got string "sctpx"$', packet_error { proto = "sctpx" })
			assert.matches("packet: payload must be a string, got table$", packet_error { payload = {} })
			assert.matches("packet: the description must be a table, got string", packet_error "udp")
			assert.equal(65535, #testing.packet { payload = string.rep("x", 65507) })
			assert.equal(#testing.packet { dst = "fd00::2" }, #testing.packet { dst = "fd00:0:0:0:0:0:0:2" })
			assert.equal(testing.packet { src = "::1", dst = "::" }:sub(9, 40), ("\0"):rep(15) .. "\1" .. ("\0"):rep(16))
		end)
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

-- Packet buffers (nfq.buffer, pkt:copy, writable header views, ownership)
-- and the split and fragment builders, on packets built here: no kernel.
local ffi = require "ffi"
local bit = require "bit"
local nfq = require "nfq"
local testing = require "nfq.testing"

local pool = nfq._buffer_pool

local function u16(n) return string.char(bit.rshift(n, 8) % 256, n % 256) end
local function get16(s, i) return s:byte(i) * 256 + s:byte(i + 1) end
local function get32(s, i) return get16(s, i) * 65536 + get16(s, i + 2) end
local function set(s, i, bytes) return s:sub(1, i - 1) .. bytes .. s:sub(i + #bytes) end

-- One's complement sums, independent of the C core.
local function sum16(s, acc)
	acc = acc or 0
	for i = 1, #s - 1, 2 do acc = acc + s:byte(i) * 256 + s:byte(i + 1) end
	if #s % 2 == 1 then acc = acc + s:byte(#s) * 256 end
	return acc
end

local function folds_to_ffff(acc)
	while acc > 0xffff do acc = acc % 65536 + math.floor(acc / 65536) end
	return acc == 0xffff
end

--- Whether the IPv4 header checksum and the TCP or UDP checksum at l4
-- (default: right after the fixed header) of packet s are right; IPv6
-- packets here carry TCP.
local function checksums_ok(s, l4)
	local v4 = bit.rshift(s:byte(1), 4) == 4
	l4 = l4 or (v4 and bit.band(s:byte(1), 15) * 4 or 40)
	local seg = s:sub(l4 + 1)
	if v4 then
		local ihl = bit.band(s:byte(1), 15) * 4
		return folds_to_ffff(sum16(s:sub(1, ihl)))
			and folds_to_ffff(sum16(seg, sum16(s:sub(13, 20)) + s:byte(10) + #seg))
	end
	return folds_to_ffff(sum16(seg, sum16(s:sub(9, 40)) + 6 + #seg))
end

local PAYLOAD = ("0123456789"):rep(10)

local function tcp(version, fields)
	local desc = { proto = "tcp", payload = PAYLOAD, tcp_flags = 0x19, seq = 0xfffffff0, id = 65535 }
	if version == 6 then desc.src, desc.dst, desc.id = "fd00::1", "fd00::2", nil end
	for k, v in pairs(fields or {}) do desc[k] = v end
	return testing.packet(desc)
end

local function tcp_payload(b)
	local s = b:bytes()
	local l4 = bit.rshift(s:byte(1), 4) == 4 and 20 or 40
	return s:sub(l4 + bit.rshift(s:byte(l4 + 13), 4) * 4 + 1)
end

-- An IPv6 packet whose UDP or TCP l4 follows hop-by-hop options, destination
-- options, a routing header and destination options again: 48 bytes.
local EXT_CHAIN_LEN = 48
local function ipv6_with_extensions(l4_packet)
	local inner = l4_packet:byte(7)
	local chain = string.char(60, 0) .. "\1\4\0\0\0\0"
		.. string.char(43, 0) .. "\1\4\0\0\0\0"
		.. string.char(60, 2, 0, 0) .. ("\0"):rep(20)
		.. string.char(inner, 0) .. "\1\4\0\0\0\0"
	local body = chain .. l4_packet:sub(41)
	local b = nfq.buffer(l4_packet:sub(1, 4) .. u16(#body) .. "\0" .. l4_packet:sub(8, 40) .. body)
	b:fix_checksums()
	return b:retain()
end

describe("packet buffers", function()
	after_each(function() nfq.recycle_buffers() end)

	it("copy a string, a pointer and length, a buffer or a packet, or hold zeros", function()
		local raw = tcp(4)
		local b = nfq.buffer(raw)
		assert.equal(raw, b:bytes())
		assert.equal(#raw, #b)
		assert.equal(#raw, b:len())
		assert.equal("TCP packet, 140 bytes", tostring(b))
		local ptr, len = b:view()
		assert.equal(raw, ffi.string(ptr, len))
		assert.equal(("\0"):rep(10), nfq.buffer(10):bytes())
		assert.equal(raw, nfq.buffer(ptr, len):bytes())
		assert.equal(raw:sub(1, 5), nfq.buffer(ptr, 5):bytes())
		local c = nfq.buffer(b)
		c:ip().ttl = 1
		assert.equal(raw, b:bytes())
		assert.equal(64, b:ip().ttl)
		assert.equal(1, c:ip().ttl)
		assert.equal(raw, b:copy():bytes())
		assert.equal("", nfq.buffer(""):bytes())
		local copies = {}
		testing.run(function(pkt)
			copies[1] = pkt:copy():bytes()
			copies[2] = nfq.buffer(pkt):bytes()
			pkt:set_payload(raw:sub(1, 40))
			copies[3] = pkt:copy():bytes()
		end, { raw })
		assert.same({ raw, raw, raw:sub(1, 40) }, copies)
	end)

	it("edit headers through writable views, by struct field and by host-order name", function()
		local b = nfq.buffer(tcp(4))
		local ip, t = b:ip(), b:tcp()
		ip.ttl, ip.tos = 9, 4
		ip.id = 0x1234
		ip.dont_fragment = false
		ip.more_fragments = true
		ip.fragment_offset = 64
		ip.total_length = 99
		ip.checksum = 0xabcd
		local s = b:bytes()
		assert.same({ 9, 4, 0x1234, 0x2000 + 8, 99, 0xabcd },
			{ s:byte(9), s:byte(2), get16(s, 5), get16(s, 7), get16(s, 3), get16(s, 11) })
		assert.same({ false, true, 64 }, { ip.dont_fragment, ip.more_fragments, ip.fragment_offset })
		ip.more_fragments, ip.fragment_offset, ip.dont_fragment = false, 0, true
		assert.equal(0x4000, get16(b:bytes(), 7))
		t.sport, t.dport, t.seq, t.ack, t.window, t.urgent = 1, 443, 0xfedcba98, 7, 512, 3
		assert.same({ 1, 443, 0xfedcba98, 7, 512, 3 }, { t.sport, t.dport, t.seq, t.ack, t.window, t.urgent })
		s = b:bytes()
		assert.same({ 1, 443, 0xfedcba98, 7, 512, 3 },
			{ get16(s, 21), get16(s, 23), get32(s, 25), get32(s, 29), get16(s, 35), get16(s, 39) })
		t.fin, t.psh, t.syn, t.rst, t.ack_flag, t.urg = false, false, true, true, false, true
		assert.equal(2 + 4 + 32, t.flags)
		assert.same({ true, true, true, false }, { t.syn, t.rst, t.urg, t.ack_flag })
		t.flags = 0x10
		assert.is_true(t.ack_flag)
		t.header_length = 24
		assert.equal(0x60, b:bytes():byte(33))
		ip.header_length = 24
		assert.equal(0x46, b:bytes():byte(1))
		ip.version = 6
		assert.equal(0x66, b:bytes():byte(1))

		local u = nfq.buffer(testing.packet { payload = "x" }):udp()
		u.sport, u.dport, u.length, u.checksum = 5, 6, 7, 8
		assert.same({ 5, 6, 7, 8 }, { u.sport, u.dport, u.length, u.checksum })

		local b6 = nfq.buffer(tcp(6))
		local ip6 = b6:ip6()
		ip6.hop_limit = 3
		ip6.traffic_class = 0xab
		ip6.flow_label = 0x12345
		ip6.payload_length = 77
		s = b6:bytes()
		assert.same({ 0x6ab12345, 77, 3 }, { get32(s, 1), get16(s, 5), s:byte(8) })
		assert.same({ 6, 0xab, 0x12345, 77 }, { ip6.version, ip6.traffic_class, ip6.flow_label, ip6.payload_length })
		b6:tcp().dport = 8443
		assert.equal(8443, get16(b6:bytes(), 43))

		local ic = nfq.buffer(testing.packet { proto = "icmp" }):icmp()
		ic.type, ic.code, ic.checksum = 3, 3, 0x1111
		assert.same({ 3, 3, 0x1111 }, { ic.type, ic.code, ic.checksum })
	end)

	it("refuse unknown header fields and bad values, naming them", function()
		local b = nfq.buffer(tcp(4))
		local ip, t = b:ip(), b:tcp()
		assert.has_error(function() ip.foo = 1 end, "nfq: the IPv4 header view has no field foo to set")
		assert.has_error(function() t.dport = 70000 end, "nfq: tcp.dport must be an integer from 0 to 65535, got 70000")
		assert.has_error(function() t.seq = -1 end, "nfq: tcp.seq must be an integer from 0 to 4294967295, got -1")
		assert.has_error(function() t.syn = 1 end, "nfq: tcp.syn must be true or false, got number")
		assert.has_error(function() ip.fragment_offset = 12 end, "nfq: ip.fragment_offset must be a multiple of 8, got 12")
		assert.has_error(function() t.header_length = 22 end,
			"nfq: tcp.header_length must be a multiple of 4 from 20 to 60, got 22")
		assert.has_error(function() ip.header_length = 64 end,
			"nfq: ip.header_length must be a multiple of 4 from 20 to 60, got 64")
		assert.has_error(function() nfq.buffer(tcp(6)):ip6().flow_label = 2 ^ 20 end,
			"nfq: ip6.flow_label must be an integer from 0 to 1048575, got 1048576")
		assert.equal(tcp(4), b:bytes())
		-- The error points at the assignment.
		local _, err = pcall(function() t.dport = "x" end)
		assert.matches("14%-buffers_spec%.lua:%d+: nfq: tcp.dport", err)
	end)

	it("leave packet views read-only", function()
		local errors = {}
		testing.run(function(pkt)
			errors[1] = select(2, pcall(function() pkt:ip().ttl = 1 end))
			errors[2] = select(2, pcall(function() pkt:tcp().dport = 1 end))
			errors[3] = pkt:get_payload() == tcp(4)
		end, { tcp(4) })
		assert.matches("attempt to write to constant location", errors[1])
		assert.matches("attempt to write to constant location", errors[2])
		assert.is_true(errors[3])
	end)

	it("reach payload and option bytes by pointer; set_len cuts, and grows with zeros", function()
		local raw = tcp(4)
		local b = nfq.buffer(raw)
		local data, len = b:data()
		assert.equal(#raw, len)
		data[40] = 65
		ffi.copy(data + 41, "BC", 2)
		assert.equal("ABC", b:bytes():sub(41, 43))
		-- A buffer given back with bytes in it comes out zeroed where it grows.
		local dirty = nfq.buffer(("\255"):rep(200))
		dirty:release()
		local grown = nfq.buffer(raw:sub(1, 20))
		grown:set_len(200)
		assert.equal(raw:sub(1, 20) .. ("\0"):rep(180), grown:bytes())
		b:set_len(45)
		b:fix_checksums()
		assert.equal(45, b:ip().total_length)
		assert.is_true(checksums_ok(b:bytes()))
		assert.has_error(function() b:set_len(65536) end,
			"nfq: the buffer length must be an integer from 0 to 65535, got number 65536")
	end)

	it("fix lengths and checksums after an edit, and say when the bytes are not IP", function()
		local b = nfq.buffer(tcp(4))
		b:tcp().dport = 1
		b:data()[60] = 0
		assert.is_false(checksums_ok(b:bytes()))
		b:fix_checksums()
		assert.is_true(checksums_ok(b:bytes()))
		local b6 = nfq.buffer(tcp(6))
		b6:set_len(50)
		b6:fix_checksums()
		assert.equal(10, b6:ip6().payload_length)
		assert.has_error(function() nfq.buffer("hello"):fix_checksums() end,
			"nfq: fix_checksums: the buffer does not hold an IPv4 or IPv6 packet")
	end)

	it("replace a packet through pkt:set_payload", function()
		local r = testing.run(function(pkt)
			local b = pkt:copy()
			b:ip().ttl = 5
			b:tcp().dport = 8080
			b:fix_checksums()
			pkt:set_payload(b)
			pkt:accept()
		end, { tcp(4) })
		local s = r[1].payload
		assert.same({ 5, 8080 }, { s:byte(9), get16(s, 23) })
		assert.is_true(checksums_ok(s))
	end)

	describe("ownership", function()
		it("gives a buffer back when the callback that made it returns, unless it was retained", function()
			local plain, kept
			local seen = {}
			testing.run(function(pkt)
				if not plain then
					plain, kept = pkt:copy(), pkt:copy():retain()
				else
					seen[1] = select(2, pcall(plain.len, plain))
					seen[2] = kept:len()
				end
			end, { tcp(4), tcp(4) })
			assert.equal("nfq: this packet buffer is gone: it went back to the pool when the packet callback that "
				.. "made it returned, or at b:release(); call b:retain() to keep a buffer longer", seen[1])
			assert.equal(140, seen[2])
			assert.equal("packet buffer (gone)", tostring(plain))
			assert.has_error(function() return plain:bytes() end)
			assert.equal(tcp(4), kept:bytes())
			kept:release()
			assert.has_error(function() return kept:bytes() end)
			kept:release()
		end)

		it("keeps a buffer made outside a callback until the next callback returns or recycle_buffers", function()
			local early = nfq.buffer("early")
			local kept = nfq.buffer("kept"):retain()
			local during
			testing.run(function() during = early:bytes() end, { tcp(4) })
			assert.equal("early", during)
			assert.has_error(function() return early:bytes() end)
			local late = nfq.buffer("late")
			nfq.recycle_buffers()
			assert.has_error(function() return late:bytes() end)
			assert.equal("kept", kept:bytes())
		end)

		it("takes a retained buffer back when it is collected", function()
			nfq.recycle_buffers()
			collectgarbage()
			local in_use = pool.in_use
			local b = nfq.buffer("x"):retain()
			nfq.recycle_buffers()
			assert.equal(in_use + 1, pool.in_use)
			assert.equal("x", b:bytes())
			b = nil -- luacheck: ignore
			collectgarbage()
			collectgarbage()
			assert.equal(in_use, pool.in_use)
		end)

		it("reuses buffers: a packet stream costs the pool what one callback uses", function()
			nfq.recycle_buffers()
			local allocated = pool.allocated
			local packets = {}
			for i = 1, 200 do packets[i] = tcp(4) end
			testing.run(function(pkt)
				local a, b = nfq.tcp_split(pkt:copy(), 10)
				assert(a and b)
			end, packets)
			assert.is_true(pool.allocated <= allocated + 3, ("the pool grew from %d to %d buffers")
				:format(allocated, pool.allocated))
		end)

		it("holds at most 4096 buffers in use at once, and says so", function()
			nfq.recycle_buffers()
			local kept = pool.in_use
			local n = 0
			local ok, err = pcall(function()
				while true do
					nfq.buffer(0)
					n = n + 1
				end
			end)
			assert.is_false(ok)
			assert.equal(4096, kept + n)
			assert.equal(4096, pool.in_use)
			assert.matches("nfq: nfq.buffer: 4096 packet buffers are in use, the most there can be: "
				.. "release the ones you retained %(b:release%(%)%)", err)
			assert.has_error(function() nfq.tcp_split(tcp(4), 10) end)
			nfq.recycle_buffers()
			assert.equal(kept, pool.in_use)
			assert.equal(140, #nfq.buffer(tcp(4)))
		end)
	end)

	it("say what is wrong with their arguments", function()
		assert.has_error(function() nfq.buffer({}) end, "nfq: nfq.buffer expects a packet (a string, a packet buffer, "
			.. "a packet, or a pointer and a length), got table")
		assert.has_error(function() nfq.buffer(70000) end,
			"nfq: nfq.buffer: the length must be an integer from 0 to 65535, got number 70000")
		assert.has_error(function() nfq.buffer(("x"):rep(70000)) end,
			"nfq: nfq.buffer: 70000 bytes are more than a buffer holds (65535)")
		assert.has_error(function() nfq.buffer(ffi.new("char[4]"), -1) end,
			"nfq: nfq.buffer: the length must be an integer from 0 to 65535, got number -1")
		local in_use = pool.in_use
		testing.run(function(pkt)
			assert.has_error(function() pkt:set_payload(pkt) end,
				"nfq: set_payload expects a string or a packet buffer, got cdata")
		end, { tcp(4) })
		assert.equal(in_use, pool.in_use)
	end)
end)

describe("nfq.tcp_split", function()
	after_each(function() nfq.recycle_buffers() end)

	for _, version in ipairs { 4, 6 } do
		it("cuts an IPv" .. version .. " segment at payload offsets: sequence numbers, flags, ids, checksums", function()
			local a, b, c = nfq.tcp_split(nfq.buffer(tcp(version)), 10, 50)
			assert.same({ PAYLOAD:sub(1, 10), PAYLOAD:sub(11, 50), PAYLOAD:sub(51) },
				{ tcp_payload(a), tcp_payload(b), tcp_payload(c) })
			assert.same({ 0xfffffff0, 0xfffffffa, 0x22 }, { a:tcp().seq, b:tcp().seq, c:tcp().seq })
			-- ACK on all, FIN and PSH only on the last
			assert.same({ 0x10, 0x10, 0x19 }, { a:tcp().flags, b:tcp().flags, c:tcp().flags })
			if version == 4 then
				assert.same({ 65535, 0, 1 }, { a:ip().id, b:ip().id, c:ip().id })
				assert.same({ 50, 80, 90 }, { a:ip().total_length, b:ip().total_length, c:ip().total_length })
			else
				assert.same({ 30, 60, 70 }, { a:ip6().payload_length, b:ip6().payload_length, c:ip6().payload_length })
			end
			for _, piece in ipairs { a, b, c } do assert.is_true(checksums_ok(piece:bytes())) end
			assert.equal(a, a:retain())
			a:release()
		end)
	end

	it("keeps SYN on the first piece only, its data one sequence number after it", function()
		local a, b = nfq.tcp_split(tcp(4, { tcp_flags = 0x02, seq = 100 }), 30)
		assert.same({ 100, 131 }, { a:tcp().seq, b:tcp().seq })
		assert.same({ true, false }, { a:tcp().syn, b:tcp().syn })
		assert.same({ PAYLOAD:sub(1, 30), PAYLOAD:sub(31) }, { tcp_payload(a), tcp_payload(b) })
	end)

	it("keeps URG, with the urgent pointer re-based, on the piece that holds the urgent byte", function()
		local p = nfq.buffer(tcp(4, { tcp_flags = 0x30 }))
		p:tcp().urgent = 30 -- the urgent byte is payload byte 29
		p:fix_checksums()
		local a, b, c = nfq.tcp_split(p, 10, 50)
		assert.same({ false, true, false }, { a:tcp().urg, b:tcp().urg, c:tcp().urg })
		assert.same({ 0, 20, 0 }, { a:tcp().urgent, b:tcp().urgent, c:tcp().urgent })
		p:tcp().urgent = 200 -- past the data: the last piece points on
		p:fix_checksums()
		a, b, c = nfq.tcp_split(p, 10, 50)
		assert.same({ false, false, true }, { a:tcp().urg, b:tcp().urg, c:tcp().urg })
		assert.equal(150, c:tcp().urgent)
		for _, piece in ipairs { a, b, c } do assert.is_true(checksums_ok(piece:bytes())) end
	end)

	it("overlaps the pieces and reverses their order", function()
		local a, b, c = nfq.tcp_split(tcp(4), 10, 50, { overlap = 4 })
		assert.same({ PAYLOAD:sub(1, 10), PAYLOAD:sub(7, 50), PAYLOAD:sub(47) },
			{ tcp_payload(a), tcp_payload(b), tcp_payload(c) })
		assert.same({ 0xfffffff0, 0xfffffff6, 0x1e }, { a:tcp().seq, b:tcp().seq, c:tcp().seq })
		local z, y, x = nfq.tcp_split(tcp(4), 10, 50, { overlap = 4, reverse = true })
		assert.same({ a:bytes(), b:bytes(), c:bytes() }, { x:bytes(), y:bytes(), z:bytes() })
		local pieces = { nfq.tcp_split(tcp(4), 10, 20, 30, 40, 50, 60, 70, 80, 90) }
		assert.equal(10, #pieces)
		assert.equal(PAYLOAD:sub(91), tcp_payload(pieces[10]))
	end)

	it("splits an IPv6 segment behind extension headers, and takes a packet or a string", function()
		local b = ipv6_with_extensions(tcp(6))
		local a, c = nfq.tcp_split(b, 40)
		assert.same({ PAYLOAD:sub(1, 40), PAYLOAD:sub(41) },
			{ a:bytes():sub(40 + EXT_CHAIN_LEN + 21), c:bytes():sub(40 + EXT_CHAIN_LEN + 21) })
		assert.is_true(checksums_ok(a:bytes(), 40 + EXT_CHAIN_LEN))
		assert.is_true(checksums_ok(c:bytes(), 40 + EXT_CHAIN_LEN))
		b:release()
		local from_packet
		testing.run(function(pkt) from_packet = { nfq.tcp_split(pkt, 10) } end, { tcp(4) })
		assert.equal(2, #from_packet)
		assert.same({ tcp_payload(nfq.tcp_split(tcp(4), 10)) }, { PAYLOAD:sub(1, 10) })
	end)

	it("says what is wrong with the packet or the offsets, and keeps no buffer", function()
		local p = tcp(4)
		local v6 = tcp(6)
		local function ip4(s, ihl_byte) return string.char(ihl_byte) .. s:sub(2) end
		local cases = {
			{ { 42, 10 }, "tcp_split expects a packet (a string, a packet buffer, a packet, or a pointer and a length), "
				.. "got number 42" },
			{ { p }, "tcp_split: give at least one offset to cut at" },
			{ { p, 0 }, "tcp_split: offset 0 is out of range: the TCP payload has 100 bytes, so an offset must be "
				.. "from 1 to 99" },
			{ { p, 100 }, "tcp_split: offset 100 is out of range: the TCP payload has 100 bytes, so an offset must be "
				.. "from 1 to 99" },
			{ { p, 50, 10 }, "tcp_split: offsets must increase, but 10 comes after 50" },
			{ { p, 10, 10 }, "tcp_split: offsets must increase, but 10 comes after 10" },
			{ { p, "x" }, 'tcp_split: offset 1 must be an integer from 0 to 65535, got string "x"' },
			{ { p, 10, 1.5 }, "tcp_split: offset 2 must be an integer from 0 to 65535, got number 1.5" },
			{ { p, nil, 10 }, "tcp_split: offset 1 must be an integer from 0 to 65535, got nil" },
			{ { p, 10, { overlap = 11 } }, "tcp_split: overlap 11 is more than the 10 bytes from offset 0 to offset 10" },
			{ { p, 10, 15, { overlap = 6 } }, "tcp_split: overlap 6 is more than the 5 bytes from offset 10 to offset 15" },
			{ { p, 10, { bogus = 1 } }, "unknown tcp_split option 'bogus'" },
			{ { p, 10, { reverse = 1 } }, "tcp_split: reverse must be true or false, got number 1" },
			{ { p, 10, { overlap = -1 } }, "tcp_split: overlap must be an integer from 0 to 65535, got number -1" },
			{ { testing.packet { payload = PAYLOAD }, 10 }, "tcp_split: not a TCP packet (IPv4 protocol 17)" },
			{ { testing.packet { src = "fd00::1", payload = PAYLOAD }, 10 },
				"tcp_split: not a TCP packet (IPv6 next header 17)" },
			{ { set(p, 7, u16(0x2000)), 10 }, "tcp_split: the packet is an IPv4 fragment, not a whole TCP segment" },
			{ { set(p, 7, u16(8)), 10 }, "tcp_split: the packet is an IPv4 fragment, not a whole TCP segment" },
			{ { set(p, 3, u16(144)), 10 }, "tcp_split: the IPv4 total length (144) does not match the packet's 140 "
				.. "bytes (b:fix_checksums() sets it)" },
			{ { set(p, 3, u16(100)), 10 }, "tcp_split: the IPv4 total length (100) does not match the packet's 140 "
				.. "bytes (b:fix_checksums() sets it)" },
			{ { ip4(p:sub(1, 30), 0x4f), 10 }, "tcp_split: the IPv4 header length (60) is more than the packet's 30 "
				.. "bytes" },
			{ { ip4(p, 0x44), 10 }, "tcp_split: the IPv4 header length is 16, less than 20" },
			{ { "\69\0", 10 }, "tcp_split: 2 bytes are too short for an IPv4 header (20)" },
			{ { "", 10 }, "tcp_split: the packet is empty" },
			{ { ip4(p, 0x55), 10 }, "tcp_split: not an IPv4 or IPv6 packet (version 5)" },
			{ { v6:sub(1, 30), 10 }, "tcp_split: 30 bytes are too short for an IPv6 header (40)" },
			{ { set(v6, 5, u16(200)), 10 }, "tcp_split: the IPv6 payload length (200) does not match the 120 bytes "
				.. "after the 40-byte header (b:fix_checksums() sets it)" },
			{ { set(set(p:sub(1, 65), 3, u16(65)), 33, "\240"), 10 }, "tcp_split: the TCP header length (60) is more "
				.. "than the 45 bytes after the IP header" },
			{ { set(p, 33, "\64"), 10 }, "tcp_split: the TCP header length is 16, less than 20" },
			{ { set(p:sub(1, 30), 3, u16(30)), 10 }, "tcp_split: the TCP header is cut short: 10 bytes, less than 20" },
			{ { set(v6, 7, "\44"), 10 }, "tcp_split: the packet is an IPv6 fragment, not a whole TCP segment" },
			{ { set(set(v6:sub(1, 44), 5, u16(4)), 7, "\0"), 10 }, "tcp_split: an IPv6 extension header at byte 40 "
				.. "runs past the end of the packet" },
		}
		local many = { p }
		for i = 1, 64 do many[i + 1] = i end
		cases[#cases + 1] = { many, "tcp_split: 64 offsets make more than 64 pieces" }
		nfq.recycle_buffers()
		local in_use = pool.in_use
		for _, case in ipairs(cases) do
			local args = case[1]
			assert.has_error(function() nfq.tcp_split(unpack(args, 1, table.maxn(args))) end, "nfq: " .. case[2])
			assert.equal(in_use, pool.in_use, case[2])
		end
	end)
end)

describe("nfq.ip_fragment", function()
	after_each(function() nfq.recycle_buffers() end)

	local DATA = PAYLOAD .. PAYLOAD .. PAYLOAD

	local function udp4(fields)
		local desc = { payload = DATA, id = 0x4321 }
		for k, v in pairs(fields or {}) do desc[k] = v end
		local b = nfq.buffer(testing.packet(desc))
		b:ip().dont_fragment = false
		b:fix_checksums()
		return b
	end

	it("cuts an IPv4 datagram at multiples of 8, keeping its id, MF on all but the last", function()
		local b = udp4()
		local original = b:bytes()
		local pieces = { nfq.ip_fragment(b, 64, 200) }
		assert.equal(3, #pieces)
		local data = {}
		for i, f in ipairs(pieces) do
			local ip = f:ip()
			assert.equal(0x4321, ip.id)
			assert.equal(({ 0, 64, 200 })[i], ip.fragment_offset)
			assert.equal(i < 3, ip.more_fragments)
			assert.is_false(ip.dont_fragment)
			assert.equal(#f, ip.total_length)
			assert.is_true(folds_to_ffff(sum16(f:bytes():sub(1, 20))))
			data[i] = f:bytes():sub(21)
		end
		assert.same({ 84, 156, 128 }, { #pieces[1], #pieces[2], #pieces[3] })
		assert.equal(original:sub(21), table.concat(data))
		local z, y, x = nfq.ip_fragment(b, 64, 200, { reverse = true })
		assert.same({ pieces[1]:bytes(), pieces[2]:bytes(), pieces[3]:bytes() }, { x:bytes(), y:bytes(), z:bytes() })
	end)

	it("refuses a packet with DF, saying how to clear it", function()
		assert.has_error(function() nfq.ip_fragment(testing.packet { payload = DATA }, 64) end,
			"nfq: ip_fragment: the packet has DF (don't fragment) set: clear it first (b:ip().dont_fragment = false)")
	end)

	it("copies to later fragments only the IPv4 options with the copied bit", function()
		local b = udp4()
		local s = b:bytes()
		-- loose source route (copied, 7 bytes), record route (not copied, 3 bytes), two ends of list
		local options = "\131\7\4\10\0\0\9" .. "\7\3\4" .. "\0\0"
		local with_options = nfq.buffer(string.char(0x48) .. s:sub(2, 20) .. options .. s:sub(21))
		with_options:fix_checksums()
		local first, second = nfq.ip_fragment(with_options, 64)
		assert.equal(options, first:bytes():sub(21, 32))
		assert.equal("\131\7\4\10\0\0\9" .. "\1\1\1" .. "\0\0", second:bytes():sub(21, 32))
		assert.is_true(folds_to_ffff(sum16(second:bytes():sub(1, 32))))
		local bad = nfq.buffer(string.char(0x46) .. s:sub(2, 20) .. "\7\9\0\0" .. s:sub(21))
		bad:fix_checksums()
		assert.has_error(function() nfq.ip_fragment(bad, 64) end,
			"nfq: ip_fragment: the IPv4 option at byte 20 is malformed (its length runs past the header)")
	end)

	it("cuts a fragment again: the pieces start at its offset, and the last keeps its MF", function()
		local b = udp4()
		b:ip().fragment_offset = 800
		b:ip().more_fragments = true
		local a, c = nfq.ip_fragment(b, 16)
		assert.same({ 800, 816 }, { a:ip().fragment_offset, c:ip().fragment_offset })
		assert.same({ true, true }, { a:ip().more_fragments, c:ip().more_fragments })
		b:ip().more_fragments = false
		a, c = nfq.ip_fragment(b, 16)
		assert.same({ true, false }, { a:ip().more_fragments, c:ip().more_fragments })
	end)

	it("puts a Fragment header after the IPv6 header, with a new identification per call", function()
		local p = testing.packet { src = "fd00::1", dst = "fd00::2", payload = DATA }
		local a, b, c = nfq.ip_fragment(p, 64, 200)
		local data = {}
		local ids = {}
		for i, f in ipairs { a, b, c } do
			local s = f:bytes()
			assert.equal(44, s:byte(7))
			assert.equal(#s - 40, f:ip6().payload_length)
			assert.equal(17, s:byte(41))
			assert.equal(0, s:byte(42))
			assert.equal(({ 0, 64, 200 })[i] + (i < 3 and 1 or 0), get16(s, 43))
			ids[i] = get32(s, 45)
			data[i] = s:sub(49)
		end
		assert.equal(p:sub(41), table.concat(data))
		assert.same({ ids[1], ids[1] }, { ids[2], ids[3] })
		local again = nfq.ip_fragment(p, 64)
		assert.are_not.equal(ids[1], get32(again:bytes(), 45))
		local given = nfq.ip_fragment(p, 64, { id = 7 })
		assert.equal(7, get32(given:bytes(), 45))
	end)

	it("keeps hop-by-hop options, and the headers up to the last routing header, before the Fragment header", function()
		local b = ipv6_with_extensions(testing.packet { src = "fd00::1", dst = "fd00::2", payload = DATA })
		local s = b:bytes()
		local a, c = nfq.ip_fragment(b, 64, { id = 9 })
		-- hop-by-hop 8, destination options 8, routing 24: 40 unfragmentable bytes after the header
		for i, f in ipairs { a, c } do
			local fs = f:bytes()
			assert.equal(#fs - 40, get16(fs, 5))
			assert.equal(s:sub(1, 4) .. s:sub(7, 56), fs:sub(1, 4) .. fs:sub(7, 56))
			assert.equal(44, fs:byte(57)) -- the routing header names the Fragment header next
			assert.equal(s:sub(58, 80), fs:sub(58, 80))
			assert.equal(60, fs:byte(81)) -- which names the last destination options
			assert.equal(i == 1 and 1 or 64, get16(fs, 83))
			assert.equal(9, get32(fs, 85))
		end
		assert.equal(s:sub(81), a:bytes():sub(89) .. c:bytes():sub(89))
		assert.equal(s:sub(81, 88), a:bytes():sub(89, 96))
		b:release()
	end)

	it("says what is wrong with the packet or the offsets", function()
		local b = udp4()
		local v6 = testing.packet { src = "fd00::1", dst = "fd00::2", payload = DATA }
		local cases = {
			{ { b, 12 }, "ip_fragment: offset 12 is not a multiple of 8" },
			{ { b, 0 }, "ip_fragment: offset 0 is out of range: the data after the IPv4 header has 308 bytes, so an "
				.. "offset must be from 1 to 307" },
			{ { b, 64, 8 }, "ip_fragment: offsets must increase, but 8 comes after 64" },
			{ { b }, "ip_fragment: give at least one offset to cut at" },
			{ { b, 64, { id = 3 } }, "ip_fragment: id is the identification of an IPv6 Fragment header; IPv4 fragments "
				.. "keep the packet's id (set b:ip().id to change it)" },
			{ { b, 64, { overlap = 3 } }, "unknown ip_fragment option 'overlap'" },
			{ { b, 64, { id = -1 } }, "ip_fragment: id must be an integer from 0 to 4294967295, got number -1" },
			{ { set(v6, 7, "\44"), 64 }, "ip_fragment: the packet already has a Fragment header: it is a fragment" },
			{ { set(v6, 5, u16(3)), 64 }, "ip_fragment: the IPv6 payload length (3) does not match the 308 bytes "
				.. "after the 40-byte header (b:fix_checksums() sets it)" },
			{ { set(v6:sub(1, 40), 5, u16(0)), 8 }, "ip_fragment: the fragmentable part (after the IPv6 header, hop-by-hop and "
				.. "routing headers) has 0 bytes: too few to cut" },
			{ { {}, 8 }, "ip_fragment expects a packet (a string, a packet buffer, a packet, or a pointer and a "
				.. "length), got table" },
		}
		b:retain()
		nfq.recycle_buffers()
		local in_use = pool.in_use
		for _, case in ipairs(cases) do
			local args = case[1]
			assert.has_error(function() nfq.ip_fragment(unpack(args, 1, table.maxn(args))) end, "nfq: " .. case[2])
			assert.equal(in_use, pool.in_use, case[2])
		end
		b:release()
	end)
end)

-- The example under nfq.testing, with nfq.send stubbed: what it would send is
-- recorded. (Its kernel test comes with nfq.send.)
describe("scripts/examples/split_tcp.lua", function()
	local H = require "helpers.net"

	it("splits the first data segment after a SYN in two, and passes the rest", function()
		local sent = {}
		local real_send = rawget(nfq, "send")
		nfq.send = function(b)
			sent[#sent + 1] = b:bytes()
			return true
		end
		finally(function() nfq.send = real_send end)
		local request = "GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"
		local r = testing.run(H.root .. "/scripts/examples/split_tcp.lua", {
			testing.packet { proto = "tcp", tcp_flags = 0x02, seq = 1000 },
			testing.packet { proto = "tcp", tcp_flags = 0x18, seq = 1001, payload = request },
			testing.packet { proto = "tcp", tcp_flags = 0x18, seq = 1001 + #request, payload = "more" },
			testing.packet { proto = "tcp", sport = 40001, tcp_flags = 0x18, seq = 5, payload = request },
			testing.packet { src = "fd00::1", proto = "tcp", tcp_flags = 0x02, seq = 7 },
			testing.packet { src = "fd00::1", proto = "tcp", tcp_flags = 0x18, seq = 8, payload = "x" },
			testing.packet { src = "fd00::1", proto = "tcp", tcp_flags = 0x18, seq = 8, payload = request },
			testing.packet { payload = "udp" },
		})
		assert.same({ "accept", "drop", "accept", "accept", "accept", "accept", "drop", "accept" },
			{ r[1].verdict, r[2].verdict, r[3].verdict, r[4].verdict, r[5].verdict, r[6].verdict, r[7].verdict,
				r[8].verdict })
		assert.equal(4, #sent)
		local pieces = {}
		for i, s in ipairs(sent) do
			local b = nfq.buffer(s)
			assert.is_true(checksums_ok(s))
			pieces[i] = { b:tcp().seq, tcp_payload(b), b:tcp().psh }
		end
		assert.same({ { 1001, "GE", false }, { 1003, request:sub(3), true }, { 8, "GE", false },
			{ 10, request:sub(3), true } }, pieces)
	end)
end)

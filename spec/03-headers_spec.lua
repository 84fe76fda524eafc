-- Header views, checksum fix-up and incremental checksums, on buffers built here.
local ffi = require "ffi"
local bit = require "bit"
local nfq = require "nfq"
local headers = require "nfq.headers"
local C = nfq._C

local function bytes(s)
	local buf = ffi.new("uint8_t[?]", #s + 1)
	ffi.copy(buf, s, #s)
	return buf, #s
end

local function be16(n) return string.char(bit.rshift(n, 8) % 256, n % 256) end

-- Independent checksum, for comparison.
local function sum16(s)
	local acc = 0
	for i = 1, #s - 1, 2 do acc = acc + s:byte(i) * 256 + s:byte(i + 1) end
	if #s % 2 == 1 then acc = acc + s:byte(#s) * 256 end
	while acc > 0xffff do acc = acc % 65536 + math.floor(acc / 65536) end
	return acc
end

local function ipv4(proto, l4, opts)
	opts = opts or {}
	local ihl = opts.ihl or 5
	local frag = opts.frag or 0
	return string.char(0x40 + ihl, 0) .. be16(ihl * 4 + #l4) .. "\0\1" .. be16(frag) .. string.char(64, proto)
		.. "\0\0" .. "\10\0\0\1" .. "\10\0\0\2" .. string.rep("\0", (ihl - 5) * 4) .. l4
end

local function ipv6(next_header, rest)
	return "\x60\0\0\0" .. be16(#rest) .. string.char(next_header, 64)
		.. string.rep("\0", 15) .. "\1" .. string.rep("\0", 15) .. "\2" .. rest
end

local udp_hdr = be16(1234) .. be16(53) .. be16(12) .. "\0\0" .. "data"
local tcp_hdr = be16(40000) .. be16(443) .. "\0\0\0\1" .. "\0\0\0\0" .. "\x50\x12" .. be16(1000) .. "\0\0\0\0"

describe("header views", function()
	it("reads IPv4 and UDP fields in host order", function()
		local buf, len = bytes(ipv4(17, udp_hdr))
		local ip = headers.ipv4(buf, len)
		assert.equal(4, ip.version)
		assert.equal(20, ip.header_length)
		assert.equal(32, ip.total_length)
		assert.equal(17, ip.protocol)
		assert.equal(64, ip.ttl)
		assert.equal("10.0.0.1", ip:src_text())
		assert.equal("10.0.0.2", nfq.ntop(ip.dst))
		local udp, off = headers.udp(C, buf, len)
		assert.equal(20, off)
		assert.equal(1234, udp.sport)
		assert.equal(53, udp.dport)
		assert.equal(12, udp.length)
		assert.is_nil(headers.tcp(C, buf, len))
	end)

	it("reads TCP flags and lengths", function()
		local buf, len = bytes(ipv4(6, tcp_hdr))
		local tcp = headers.tcp(C, buf, len)
		assert.equal(443, tcp.dport)
		assert.equal(1, tcp.seq)
		assert.equal(20, tcp.header_length)
		assert.is_true(tcp.syn)
		assert.is_true(tcp.ack_flag)
		assert.is_false(tcp.fin)
	end)

	it("skips IPv6 extension headers to the transport header", function()
		local hop = string.char(58, 0) .. string.rep("\0", 6)
		local buf, len = bytes(ipv6(0, hop .. "\128\0\0\0\0\0\0\0"))
		local ip6 = headers.ipv6(buf, len)
		assert.equal(6, ip6.version)
		assert.equal(16, ip6.payload_length)
		assert.equal("::1", nfq.ntop(ip6.src):sub(-3))
		local proto, off = headers.transport(C, buf, len)
		assert.equal(58, proto)
		assert.equal(48, off)
		assert.equal(128, headers.icmp(C, buf, len).type)
	end)

	it("returns nil for cut, malformed or empty buffers", function()
		local good = ipv4(17, udp_hdr)
		for name, s in pairs {
			["empty"] = "",
			["cut IPv4 header"] = good:sub(1, 19),
			["IHL below 5"] = "\x44" .. good:sub(2),
			["IHL past the end"] = "\x4f" .. good:sub(2, 30),
			["cut UDP header"] = good:sub(1, 25),
			["later fragment"] = ipv4(17, udp_hdr, { frag = 100 }),
			["version 5"] = "\x55" .. good:sub(2),
			["IPv6 ext header past the end"] = ipv6(0, "\17\200"),
		} do
			local buf, len = bytes(s)
			assert.is_nil(headers.udp(C, buf, len), name)
		end
		assert.is_nil(headers.ipv4(nil, 0))
		assert.is_nil(headers.udp(C, nil, 0))
		assert.is_nil(headers.ipv6(bytes(good)))
	end)

	it("has no IPv4 view, nor views under it, when the total length is shorter than the header", function()
		local good = ipv4(17, udp_hdr)
		for _, total in ipairs { 0, 8, 19 } do
			local buf, len = bytes(good:sub(1, 2) .. be16(total) .. good:sub(5))
			assert.is_nil(headers.ipv4(buf, len), "total length " .. total)
			assert.is_nil(headers.udp(C, buf, len), "total length " .. total)
			assert.is_nil(headers.transport(C, buf, len), "total length " .. total)
			assert.equal(-1, C.nfq_transport_offset(buf, len, ffi.new("uint8_t[1]")))
		end
		-- with 4 bytes of options the header is 24 bytes: 20 is too short
		local opts = ipv4(17, udp_hdr, { ihl = 6 })
		local buf, len = bytes(opts:sub(1, 2) .. be16(20) .. opts:sub(5))
		assert.is_nil(headers.ipv4(buf, len))
		buf, len = bytes(good:sub(1, 2) .. be16(20) .. good:sub(5))
		assert.equal(20, headers.ipv4(buf, len).total_length, "a header alone is a whole packet")
	end)

	it("has no UDP view when the UDP length is below 8", function()
		for _, ulen in ipairs { 0, 1, 7 } do
			local buf, len = bytes(ipv4(17, be16(1234) .. be16(53) .. be16(ulen) .. "\0\0data"))
			assert.is_nil(headers.udp(C, buf, len), "UDP length " .. ulen)
			buf, len = bytes(ipv6(17, be16(1234) .. be16(53) .. be16(ulen) .. "\0\0data"))
			assert.is_nil(headers.udp(C, buf, len), "UDP/IPv6 length " .. ulen)
		end
		local buf, len = bytes(ipv4(17, be16(1234) .. be16(53) .. be16(8) .. "\0\0"))
		assert.equal(8, headers.udp(C, buf, len).length)
	end)

	it("never reads outside random buffers", function()
		math.randomseed(7)
		for _ = 1, 20000 do
			local n = math.random(0, 80)
			local t = {}
			for i = 1, n do t[i] = math.random(0, 255) end
			if n > 0 and math.random() < 0.5 then t[1] = math.random() < 0.5 and 0x45 or 0x60 end
			local buf, len = bytes(string.char(unpack(t)))
			local h, off = headers.udp(C, buf, len)
			if h then assert.is_true(off + 8 <= len) end
			h, off = headers.tcp(C, buf, len)
			if h then assert.is_true(off + h.header_length <= len) end
			local _, toff = headers.transport(C, buf, len)
			if toff then assert.is_true(toff <= len) end
		end
	end)
end)

describe("checksums", function()
	it("fixes IPv4 and UDP lengths and checksums after an edit", function()
		local s = ipv4(17, be16(1234) .. be16(53) .. be16(999) .. "\1\2" .. "longer data!")
		local buf, len = bytes(s)
		assert.equal(0, C.nfq_fix_checksums(buf, len))
		local out = ffi.string(buf, len)
		assert.equal(len, out:byte(3) * 256 + out:byte(4))
		assert.equal(0xffff, sum16(out:sub(1, 20)), "IPv4 header sums to all ones")
		local l4 = out:sub(21)
		assert.equal(#l4, l4:byte(5) * 256 + l4:byte(6))
		local pseudo = out:sub(13, 20) .. "\0\17" .. be16(#l4)
		assert.equal(0xffff, sum16(pseudo .. l4))
	end)

	it("fixes TCP over IPv6 and the IPv6 payload length", function()
		local s = ipv6(6, tcp_hdr .. "payload")
		local buf, len = bytes(s)
		assert.equal(0, C.nfq_fix_checksums(buf, len))
		local out = ffi.string(buf, len)
		local l4 = out:sub(41)
		assert.equal(#l4, out:byte(5) * 256 + out:byte(6))
		local pseudo = out:sub(9, 40) .. "\0\0" .. be16(#l4) .. "\0\0\0\6"
		assert.equal(0xffff, sum16(pseudo .. l4))
	end)

	-- A fragment holds part of a datagram; the UDP header of a first
	-- fragment describes the whole one. Only the IP header may change.
	local function fragment_udp()
		return be16(1234) .. be16(53) .. be16(3008) .. "\x12\x34" .. string.rep("f", 1224)
	end

	it("fixes only the IPv4 header of a fragment, first or later", function()
		for _, frag in ipairs { 0x2000, 0x2000 + 154, 154, 0x6000 } do
			local s = ipv4(17, fragment_udp(), { frag = frag })
			s = s:sub(1, 2) .. be16(9999) .. s:sub(5)
			local buf, len = bytes(s)
			assert.equal(0, C.nfq_fix_checksums(buf, len))
			local out = ffi.string(buf, len)
			local what = ("fragment field 0x%04x"):format(frag)
			assert.equal(len, out:byte(3) * 256 + out:byte(4), what)
			assert.equal(0xffff, sum16(out:sub(1, 20)), what)
			assert.equal(s:sub(21), out:sub(21), what .. ": the UDP header is left alone")
		end
	end)

	it("still fixes UDP in a datagram that is whole (DF set, or an IPv6 atomic fragment)", function()
		local s = ipv4(17, fragment_udp(), { frag = 0x4000 })
		local buf, len = bytes(s)
		assert.equal(0, C.nfq_fix_checksums(buf, len))
		local out = ffi.string(buf, len)
		assert.equal(len - 20, out:byte(25) * 256 + out:byte(26))
		local atomic = ipv6(44, string.char(17, 0) .. "\0\0" .. "\0\0\0\1" .. fragment_udp())
		buf, len = bytes(atomic)
		assert.equal(0, C.nfq_fix_checksums(buf, len))
		out = ffi.string(buf, len)
		assert.equal(len - 48, out:byte(53) * 256 + out:byte(54))
	end)

	it("fixes only the IPv6 payload length of a fragment, first or later", function()
		for _, frag in ipairs { 1, 154 * 8 + 1, 154 * 8 } do
			local fh = string.char(17, 0) .. be16(frag) .. "\0\0\0\1"
			local s = ipv6(44, fh .. fragment_udp())
			s = s:sub(1, 4) .. be16(9999) .. s:sub(7)
			local buf, len = bytes(s)
			assert.equal(0, C.nfq_fix_checksums(buf, len))
			local out = ffi.string(buf, len)
			local what = ("fragment field 0x%04x"):format(frag)
			assert.equal(len - 40, out:byte(5) * 256 + out:byte(6), what)
			assert.equal(s:sub(7), out:sub(7), what .. ": nothing past the payload length changes")
		end
	end)

	it("refuses what is not IP", function()
		local buf, len = bytes("not an ip packet at all")
		assert.equal(-1, C.nfq_fix_checksums(buf, len))
	end)

	it("updates a checksum incrementally as a full recompute would (RFC 1624)", function()
		local s = ipv4(17, udp_hdr)
		local buf, len = bytes(s)
		C.nfq_fix_checksums(buf, len)
		local before = ffi.cast("const struct nfq_ipv4_hdr *", buf).checksum
		-- change the TTL/protocol word 64/17 to 63/17
		local updated = nfq.csum_replace16(before, 64 * 256 + 17, 63 * 256 + 17)
		buf[8] = 63
		C.nfq_fix_checksums(buf, len)
		assert.equal(ffi.cast("const struct nfq_ipv4_hdr *", buf).checksum, updated)
		-- and a 32-bit source address 10.0.0.1 -> 192.168.7.9
		local before32 = updated
		local after32 = nfq.csum_replace32(before32, 0x0a000001, 0xc0a80709)
		buf[12], buf[13], buf[14], buf[15] = 192, 168, 7, 9
		C.nfq_fix_checksums(buf, len)
		assert.equal(ffi.cast("const struct nfq_ipv4_hdr *", buf).checksum, after32)
	end)
end)

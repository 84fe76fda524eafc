-- Parsing the kernel's packet messages, on buffers built here; and
-- tostring() on the packets parsed from them.
local ffi = require "ffi"
local bit = require "bit"
local nfq = require "nfq"
local C = nfq._C

local function le16(n) return string.char(n % 256, bit.rshift(n, 8) % 256) end
local function le32(n) return le16(n % 65536) .. le16(math.floor(n / 65536)) end
local function be16(n) return string.char(bit.rshift(n, 8) % 256, n % 256) end
local function be32(n) return be16(math.floor(n / 65536)) .. be16(n % 65536) end
local function be64(n) return be32(0) .. be32(n) end

local NFQA = { PACKET_HDR = 1, MARK = 3, TIMESTAMP = 4, INDEV = 5, OUTDEV = 6, HWADDR = 9,
	PAYLOAD = 10, CT = 11, CT_INFO = 12, CAP_LEN = 13, SKB_INFO = 14, UID = 16, GID = 17,
	SECCTX = 18, VLAN = 19, L2HDR = 20, PRIORITY = 21 }
local CTA = { STATUS = 3, MARK = 8, ID = 12 }

local function attr(kind, payload)
	local len = 4 + #payload
	return le16(len) .. le16(kind) .. payload .. string.rep("\0", (4 - len % 4) % 4)
end

local function message(attrs, opts)
	opts = opts or {}
	local body = string.char(2, 0) .. be16(1) .. table.concat(attrs)
	local len = opts.len or (16 + #body)
	return le32(len) .. le16(opts.type or 0x0300) .. le16(0) .. le32(0) .. le32(0) .. body
end

local function packet_hdr(id, proto, hook)
	return attr(NFQA.PACKET_HDR, be32(id) .. be16(proto) .. string.char(hook))
end

local ipv4_udp = "\x45\0\0\31" .. "\0\0\0\0" .. "\64\17\0\0" .. "\127\0\0\1\127\0\0\1"
	.. "\0\53\0\53\0\11\0\0" .. "abc"

local function parse(msg)
	local p = ffi.new("struct nfq_packet")
	local buf = ffi.new("uint8_t[?]", #msg + 1)
	ffi.copy(buf, msg, #msg)
	local rc = C.nfq_packet_parse(p, buf, #msg)
	return rc, p, buf
end

local function lua_packet(p)
	return ffi.new("struct nfq_lua_packet", p, p.gen, p.id, p.mark, p.hw_protocol, p.hook)
end

describe("nfq_packet_parse", function()
	it("reads every attribute of a full message", function()
		local rc, p, buf = parse(message {
			packet_hdr(77, 0x0800, 3),
			attr(NFQA.MARK, be32(0xdeadbeef)),
			attr(NFQA.TIMESTAMP, be64(1700000000) .. be64(123456)),
			attr(NFQA.INDEV, be32(4)),
			attr(NFQA.OUTDEV, be32(5)),
			attr(NFQA.HWADDR, be16(6) .. "\0\0" .. "\1\2\3\4\5\6\0\0"),
			attr(NFQA.CAP_LEN, be32(1500)),
			attr(NFQA.UID, be32(1000)),
			attr(NFQA.GID, be32(100)),
			attr(NFQA.PAYLOAD, ipv4_udp),
		})
		assert.equal(0, rc)
		assert.equal(77, p.id)
		assert.equal(0x0800, p.hw_protocol)
		assert.equal(3, p.hook)
		assert.equal(0xdeadbeef, p.mark)
		assert.equal(1700000000, tonumber(p.ts_sec))
		assert.equal(123456, tonumber(p.ts_usec))
		assert.equal(4, p.indev)
		assert.equal(5, p.outdev)
		assert.equal(6, p.hw_addrlen)
		assert.equal("\1\2\3\4\5\6", ffi.string(p.hw_addr, 6))
		assert.equal(1500, p.cap_len)
		assert.equal(1000, p.uid)
		assert.equal(100, p.gid)
		assert.equal(#ipv4_udp, p.payload_len)
		assert.equal(ipv4_udp, ffi.string(p.payload, p.payload_len))
		assert.equal(C.NFQ_PKT_PENDING, p.state)
		local pkt = lua_packet(p)
		assert.equal(1700000000.123456, pkt:get_timestamp())
		assert.equal("\1\2\3\4\5\6", pkt:get_hw())
		assert.equal(0xdeadbeef, pkt:get_mark())
		assert.equal(buf, buf) -- keeps the buffer alive while p points into it
	end)

	it("reads conntrack, VLAN, skb info, priority, L2 header and security context", function()
		local rc, p = parse(message {
			packet_hdr(8, 0x0800, 0),
			attr(NFQA.CT, attr(CTA.ID, be32(4242)) .. attr(CTA.MARK, be32(0x55)) .. attr(CTA.STATUS, be32(0x0e))),
			attr(NFQA.CT_INFO, be32(3)),
			attr(NFQA.SKB_INFO, be32(3)),
			attr(NFQA.PRIORITY, be32(6)),
			attr(NFQA.VLAN, attr(1, be16(0x8100)) .. attr(2, be16(0xa00c))),
			attr(NFQA.L2HDR, string.rep("\1", 12) .. "\8\0"),
			attr(NFQA.SECCTX, "system_u:object_r:x_t\0"),
			attr(NFQA.PAYLOAD, ipv4_udp),
		})
		assert.equal(0, rc)
		local pkt = lua_packet(p)
		assert.equal(4242, pkt.ct_id)
		assert.equal(0x55, pkt.ct_mark)
		assert.equal(0x0e, pkt.ct_status)
		assert.equal("established", pkt.ct_state)
		assert.is_true(pkt.ct_reply)
		assert.is_true(pkt.csum_not_ready)
		assert.is_true(pkt.gso)
		assert.is_false(pkt.csum_not_verified)
		assert.equal(6, pkt.priority)
		assert.equal(0x8100, pkt.vlan_proto)
		assert.equal(12, pkt.vlan_id)
		assert.equal(5, pkt.vlan_priority)
		assert.equal(14, #pkt:get_l2hdr())
		assert.equal("system_u:object_r:x_t", pkt.secctx)
		-- a retained copy keeps what pointed into the receive buffer
		local copy = C.nfq_packet_retain(p)
		assert.equal("system_u:object_r:x_t", ffi.string(copy.secctx, copy.secctx_len))
		assert.equal(14, copy.l2hdr_len)
		assert.are_not.equal(p.l2hdr, copy.l2hdr)
		C.nfq_packet_release(copy)
	end)

	it("refuses a malformed nested conntrack attribute", function()
		assert.equal(-1, (parse(message { packet_hdr(8, 0x0800, 0), attr(NFQA.CT, le16(99) .. le16(CTA.ID)) })))
	end)

	it("leaves absent attributes empty", function()
		local rc, p = parse(message { packet_hdr(1, 0x86dd, 1) })
		assert.equal(0, rc)
		assert.equal(nil, p.payload)
		assert.equal(0, p.payload_len)
		local pkt = lua_packet(p)
		assert.is_nil(pkt:get_hw())
		assert.equal(0.0, pkt:get_timestamp())
		for _, field in ipairs { "uid", "gid", "secctx", "ct_state", "ct_mark", "vlan_id", "priority", "gso" } do
			assert.is_nil(pkt[field], field)
		end
		assert.equal(0, pkt.indev)
		assert.is_false(pkt.truncated)
		assert.is_nil(pkt:get_l2hdr())
		assert.is_nil(pkt:ip())
		assert.is_nil(pkt:udp())
		assert.equal("packet 1, no payload", tostring(pkt))
	end)

	it("ignores attributes too short for their type", function()
		local rc, p = parse(message { packet_hdr(2, 0x0800, 1), attr(NFQA.MARK, "\1\2"),
			attr(NFQA.HWADDR, "\0\6"), attr(NFQA.TIMESTAMP, be64(5)) })
		assert.equal(0, rc)
		assert.equal(0, p.mark)
		assert.equal(0, p.hw_addrlen)
		assert.equal(0, bit.band(p.flags, C.NFQ_PF_TIMESTAMP))
	end)

	it("refuses malformed messages", function()
		local good_hdr = packet_hdr(3, 0x0800, 1)
		for name, msg in pairs {
			["no packet header"] = message { attr(NFQA.MARK, be32(1)) },
			["short packet header"] = message { attr(NFQA.PACKET_HDR, be32(3)) },
			["length past the buffer"] = message({ good_hdr }, { len = 400 }),
			["length below the headers"] = message({ good_hdr }, { len = 10 }),
			["not a packet message"] = message({ good_hdr }, { type = 0x0301 }),
			["attribute past the end"] = message { good_hdr, le16(200) .. le16(NFQA.PAYLOAD) .. "abcd" },
			["attribute shorter than its header"] = message { good_hdr, le16(2) .. le16(NFQA.MARK) },
			["too short for a header"] = "\20\0\0",
		} do
			assert.equal(-1, (parse(msg)), name)
		end
	end)

	it("skips attributes newer than it knows", function()
		local rc, p = parse(message { packet_hdr(4, 0x0800, 1), attr(200, "future"),
			attr(NFQA.PAYLOAD, ipv4_udp) })
		assert.equal(0, rc)
		assert.equal(#ipv4_udp, p.payload_len)
	end)

	it("never reads outside random buffers", function()
		math.randomseed(42)
		local base = message { packet_hdr(5, 0x0800, 1), attr(NFQA.MARK, be32(9)), attr(NFQA.PAYLOAD, ipv4_udp) }
		for _ = 1, 5000 do
			local bytes = { base:byte(1, -1) }
			for _ = 1, math.random(1, 6) do
				bytes[math.random(1, #bytes)] = math.random(0, 255)
			end
			local msg = string.char(unpack(bytes)):sub(1, math.random(1, #bytes))
			local rc, p = parse(msg)
			if rc == 0 and p.payload ~= nil then
				assert.is_true(p.payload_len <= #msg)
			end
		end
	end)
end)

describe("tostring(pkt)", function()
	local function describe_payload(payload)
		local _, p = parse(message { packet_hdr(9, 0x0800, 1), attr(NFQA.PAYLOAD, payload) })
		return tostring(lua_packet(p))
	end

	it("names the transport of IPv4 and IPv6 packets", function()
		assert.equal("UDP packet, 31 bytes", describe_payload(ipv4_udp))
		local ipv6_tcp = "\x60\0\0\0\0\20\6\64" .. string.rep("\0", 32) .. string.rep("t", 20)
		assert.equal("TCP packet, 60 bytes", describe_payload(ipv6_tcp))
		local ipv6_hop_icmp = "\x60\0\0\0\0\16\0\64" .. string.rep("\0", 32) .. "\58\0\0\0\0\0\0\0" .. "\128\0\0\0\0\0\0\0"
		assert.equal("ICMPv6 packet, 56 bytes", describe_payload(ipv6_hop_icmp))
		assert.equal("protocol 99 packet, 20 bytes", describe_payload("\x45\0\0\20\0\0\0\0\64\99" .. string.rep("\0", 10)))
	end)

	it("copes with packets too short or not IP", function()
		assert.equal("unknown protocol packet, 3 bytes", describe_payload("\x45\0\0"))
		assert.equal("unknown protocol packet, 4 bytes", describe_payload("junk"))
		local ipv6_ext_loop = "\x60\0\0\0\0\8\0\64" .. string.rep("\0", 32) .. "\0\255"
		assert.matches("packet, 42 bytes", describe_payload(ipv6_ext_loop))
	end)
end)

--- nfq.headers: IPv4, IPv6, UDP, TCP and ICMP headers laid over packet
-- memory through the FFI, without copies. A view is nil when the bytes are
-- not a whole header; nothing here reads outside the given length. Views of
-- a packet are const pointers, which the FFI refuses to write through; views
-- of a packet buffer (the *_writable functions) take host-order values by
-- name too (tcp.dport = 443), through the setters below.
local ffi = require "ffi"
local bit = require "bit"
require "nfq.cdef"

local band, bor, rshift, lshift, bswap, bnot = bit.band, bit.bor, bit.rshift, bit.lshift, bit.bswap, bit.bnot
local ffi_cast, ffi_string = ffi.cast, ffi.string
local type, error, tostring, floor = type, error, tostring, math.floor

if not pcall(function() return ffi.C.nfq_inet_ntop end) then
	ffi.cdef [[const char *nfq_inet_ntop(int af, const void *src, char *dst, unsigned size) asm("inet_ntop");]]
end

local _M = {}

local function be16(v) return rshift(bswap(v), 16) end
local function be32(v) return tonumber(ffi_cast("uint32_t", bswap(v))) end

local ntop_buf = ffi.new("char[46]")

--- Text form of an address: a 4- or 16-byte cdata array (ip.src, ip6.dst).
function _M.ntop(addr)
	local n = ffi.sizeof(addr)
	local af = n == 4 and 2 or n == 16 and 10
	if not af then
		error("nfq.ntop: expects a 4- or 16-byte address, got " .. n .. " bytes", 2)
	end
	return ffi_string(ffi.C.nfq_inet_ntop(af, addr, ntop_buf, 46))
end
local ntop = _M.ntop

-- Host-order values of big-endian fields by name, then methods.
local function getters(fields, methods)
	return function(self, k)
		local get = fields[k]
		if get then return get(self) end
		return methods and methods[k]
	end
end

-- Host-order values by name written as big-endian fields: unknown names and
-- bad values raise, naming the header (error level 3: the assignment).
local function setters(header, fields)
	return function(self, k, v)
		local set = fields[k]
		if not set then
			error(("nfq: the %s view has no field %s to set"):format(header, tostring(k)), 2)
		end
		set(self, v)
	end
end

local function int_value(v, hi, what)
	if type(v) ~= "number" or v ~= floor(v) or v < 0 or v > hi then
		error(("nfq: %s must be an integer from 0 to %d, got %s"):format(what, hi, type(v) == "number"
			and tostring(v) or type(v)), 4)
	end
	return v
end

local function bool_value(v, what)
	if type(v) ~= "boolean" then
		error(("nfq: %s must be true or false, got %s"):format(what, type(v)), 4)
	end
	return v
end

local function to_be16(v) return rshift(bswap(v), 16) end

--- A setter of one bit of an 8-bit field (TCP flags).
local function flag_setter(field, mask, what)
	return function(h, v)
		if bool_value(v, what) then
			h[field] = bor(h[field], mask)
		else
			h[field] = band(h[field], bnot(mask))
		end
	end
end

--- A setter of one bit of a big-endian 16-bit field (IPv4 fragment flags).
local function flag16_setter(field, mask, what)
	return function(h, v)
		local host = be16(h[field])
		h[field] = to_be16(bool_value(v, what) and bor(host, mask) or band(host, bnot(mask)))
	end
end

local function be16_setter(field, what)
	return function(h, v) h[field] = to_be16(int_value(v, 0xffff, what)) end
end

local function be32_setter(field, what)
	return function(h, v) h[field] = bswap(int_value(v, 0xffffffff, what)) end
end

--- A header length in bytes, kept in the high nibble of field as 32-bit words.
local function length_nibble_setter(field, what)
	return function(h, v)
		if type(v) ~= "number" or v ~= floor(v) or v < 20 or v > 60 or v % 4 ~= 0 then
			error(("nfq: %s must be a multiple of 4 from 20 to 60, got %s"):format(what, tostring(v)), 3)
		end
		h[field] = bor(band(h[field], 0x0f), lshift(v / 4, 4))
	end
end

local address_methods = {
	src_text = function(h) return ntop(h.src) end,
	dst_text = function(h) return ntop(h.dst) end,
}

ffi.metatype("struct nfq_ipv4_hdr", { __index = getters({
	version = function(h) return rshift(h.version_ihl, 4) end,
	header_length = function(h) return band(h.version_ihl, 15) * 4 end,
	total_length = function(h) return be16(h.total_length_be) end,
	id = function(h) return be16(h.id_be) end,
	fragment_offset = function(h) return band(be16(h.frag_be), 0x1fff) * 8 end,
	more_fragments = function(h) return band(be16(h.frag_be), 0x2000) ~= 0 end,
	dont_fragment = function(h) return band(be16(h.frag_be), 0x4000) ~= 0 end,
	checksum = function(h) return be16(h.checksum_be) end,
}, address_methods), __newindex = setters("IPv4 header", {
	version = function(h, v) h.version_ihl = bor(band(h.version_ihl, 0x0f), lshift(int_value(v, 15, "ip.version"), 4)) end,
	header_length = function(h, v)
		if type(v) ~= "number" or v ~= floor(v) or v < 20 or v > 60 or v % 4 ~= 0 then
			error("nfq: ip.header_length must be a multiple of 4 from 20 to 60, got " .. tostring(v), 3)
		end
		h.version_ihl = bor(band(h.version_ihl, 0xf0), v / 4)
	end,
	total_length = be16_setter("total_length_be", "ip.total_length"),
	id = be16_setter("id_be", "ip.id"),
	fragment_offset = function(h, v)
		if int_value(v, 0xfff8, "ip.fragment_offset") % 8 ~= 0 then
			error("nfq: ip.fragment_offset must be a multiple of 8, got " .. v, 3)
		end
		h.frag_be = to_be16(bor(band(be16(h.frag_be), 0xe000), v / 8))
	end,
	more_fragments = flag16_setter("frag_be", 0x2000, "ip.more_fragments"),
	dont_fragment = flag16_setter("frag_be", 0x4000, "ip.dont_fragment"),
	checksum = be16_setter("checksum_be", "ip.checksum"),
}) })

ffi.metatype("struct nfq_ipv6_hdr", { __index = getters({
	version = function(h) return rshift(be32(h.vtc_flow_be), 28) end,
	traffic_class = function(h) return band(rshift(be32(h.vtc_flow_be), 20), 0xff) end,
	flow_label = function(h) return band(be32(h.vtc_flow_be), 0xfffff) end,
	payload_length = function(h) return be16(h.payload_length_be) end,
}, address_methods), __newindex = setters("IPv6 header", {
	version = function(h, v)
		h.vtc_flow_be = bswap(bor(band(be32(h.vtc_flow_be), 0x0fffffff), lshift(int_value(v, 15, "ip6.version"), 28)))
	end,
	traffic_class = function(h, v)
		h.vtc_flow_be = bswap(bor(band(be32(h.vtc_flow_be), 0xf00fffff),
			lshift(int_value(v, 0xff, "ip6.traffic_class"), 20)))
	end,
	flow_label = function(h, v)
		h.vtc_flow_be = bswap(bor(band(be32(h.vtc_flow_be), 0xfff00000), int_value(v, 0xfffff, "ip6.flow_label")))
	end,
	payload_length = be16_setter("payload_length_be", "ip6.payload_length"),
}) })

ffi.metatype("struct nfq_udp_hdr", { __index = getters {
	sport = function(h) return be16(h.sport_be) end,
	dport = function(h) return be16(h.dport_be) end,
	length = function(h) return be16(h.length_be) end,
	checksum = function(h) return be16(h.checksum_be) end,
}, __newindex = setters("UDP header", {
	sport = be16_setter("sport_be", "udp.sport"),
	dport = be16_setter("dport_be", "udp.dport"),
	length = be16_setter("length_be", "udp.length"),
	checksum = be16_setter("checksum_be", "udp.checksum"),
}) })

ffi.metatype("struct nfq_tcp_hdr", { __index = getters {
	sport = function(h) return be16(h.sport_be) end,
	dport = function(h) return be16(h.dport_be) end,
	seq = function(h) return be32(h.seq_be) end,
	ack = function(h) return be32(h.ack_be) end,
	header_length = function(h) return rshift(h.data_offset, 4) * 4 end,
	window = function(h) return be16(h.window_be) end,
	checksum = function(h) return be16(h.checksum_be) end,
	fin = function(h) return band(h.flags, 1) ~= 0 end,
	syn = function(h) return band(h.flags, 2) ~= 0 end,
	rst = function(h) return band(h.flags, 4) ~= 0 end,
	psh = function(h) return band(h.flags, 8) ~= 0 end,
	ack_flag = function(h) return band(h.flags, 16) ~= 0 end,
	urg = function(h) return band(h.flags, 32) ~= 0 end,
	urgent = function(h) return be16(h.urgent_be) end,
}, __newindex = setters("TCP header", {
	sport = be16_setter("sport_be", "tcp.sport"),
	dport = be16_setter("dport_be", "tcp.dport"),
	seq = be32_setter("seq_be", "tcp.seq"),
	ack = be32_setter("ack_be", "tcp.ack"),
	header_length = length_nibble_setter("data_offset", "tcp.header_length"),
	window = be16_setter("window_be", "tcp.window"),
	checksum = be16_setter("checksum_be", "tcp.checksum"),
	urgent = be16_setter("urgent_be", "tcp.urgent"),
	fin = flag_setter("flags", 1, "tcp.fin"),
	syn = flag_setter("flags", 2, "tcp.syn"),
	rst = flag_setter("flags", 4, "tcp.rst"),
	psh = flag_setter("flags", 8, "tcp.psh"),
	ack_flag = flag_setter("flags", 16, "tcp.ack_flag"),
	urg = flag_setter("flags", 32, "tcp.urg"),
}) })

ffi.metatype("struct nfq_icmp_hdr", { __index = getters {
	checksum = function(h) return be16(h.checksum_be) end,
}, __newindex = setters("ICMP header", {
	checksum = be16_setter("checksum_be", "icmp.checksum"),
}) })

local ipv4_t = ffi.typeof("const struct nfq_ipv4_hdr *")
local ipv6_t = ffi.typeof("const struct nfq_ipv6_hdr *")
local udp_t = ffi.typeof("const struct nfq_udp_hdr *")
local tcp_t = ffi.typeof("const struct nfq_tcp_hdr *")
local icmp_t = ffi.typeof("const struct nfq_icmp_hdr *")

--- The IPv4 header at data, or nil; also nil when its total length is
-- shorter than the header itself.
function _M.ipv4(data, len)
	if data == nil or len < 20 or rshift(data[0], 4) ~= 4 then return nil end
	local ihl = band(data[0], 15) * 4
	if ihl < 20 or ihl > len or data[2] * 256 + data[3] < ihl then return nil end
	return ffi_cast(ipv4_t, data)
end

--- The IPv6 header at data, or nil.
function _M.ipv6(data, len)
	if data == nil or len < 40 or rshift(data[0], 4) ~= 6 then return nil end
	return ffi_cast(ipv6_t, data)
end

local proto_box = ffi.new("uint8_t[1]")

--- Transport protocol number and header offset, past IPv6 extension
-- headers; nil for later fragments and cut or malformed packets. IPv4 is
-- done here, so that the common case stays inside the JIT trace.
local function transport(C, data, len)
	if data == nil or len < 1 then return nil end
	if rshift(data[0], 4) == 4 then
		local ihl = band(data[0], 15) * 4
		if len < 20 or ihl < 20 or ihl > len or band(data[6], 0x1f) + data[7] ~= 0
			or data[2] * 256 + data[3] < ihl then
			return nil
		end
		return data[9], ihl
	end
	local off = C.nfq_transport_offset(data, len, proto_box)
	if off < 0 then return nil end
	return proto_box[0], off
end
_M.transport = transport

local function transport_view(C, data, len, want1, want2, min_len, view_t)
	local proto, off = transport(C, data, len)
	if not proto or (proto ~= want1 and proto ~= want2) or off + min_len > len then return nil end
	return ffi_cast(view_t, data + off), off
end

--- The UDP header, or nil; also nil when its length is below its own 8 bytes.
function _M.udp(C, data, len)
	local h, off = transport_view(C, data, len, 17, 17, 8, udp_t)
	if h == nil or data[off + 4] * 256 + data[off + 5] < 8 then return nil end
	return h, off
end

function _M.tcp(C, data, len)
	local h, off = transport_view(C, data, len, 6, 6, 20, tcp_t)
	if h == nil or h.header_length < 20 or off + h.header_length > len then return nil end
	return h, off
end

function _M.icmp(C, data, len) return transport_view(C, data, len, 1, 58, 8, icmp_t) end

-- The same views, writable: for packet buffers, whose bytes the script owns.
local ipv4_w = ffi.typeof("struct nfq_ipv4_hdr *")
local ipv6_w = ffi.typeof("struct nfq_ipv6_hdr *")
local udp_w = ffi.typeof("struct nfq_udp_hdr *")
local tcp_w = ffi.typeof("struct nfq_tcp_hdr *")
local icmp_w = ffi.typeof("struct nfq_icmp_hdr *")

local function writable(view_t, h, off)
	if h == nil then return nil end
	return ffi_cast(view_t, h), off
end

function _M.ipv4_writable(data, len) return writable(ipv4_w, _M.ipv4(data, len)) end
function _M.ipv6_writable(data, len) return writable(ipv6_w, _M.ipv6(data, len)) end
function _M.udp_writable(C, data, len) return writable(udp_w, _M.udp(C, data, len)) end
function _M.tcp_writable(C, data, len) return writable(tcp_w, _M.tcp(C, data, len)) end
function _M.icmp_writable(C, data, len) return writable(icmp_w, _M.icmp(C, data, len)) end

--- RFC 1624 incremental update: the checksum after a 16-bit field went
-- from old to new.
function _M.csum_replace16(csum, old, new)
	local sum = band(bnot(csum), 0xffff) + band(bnot(old), 0xffff) + band(new, 0xffff)
	sum = band(sum, 0xffff) + rshift(sum, 16)
	sum = band(sum, 0xffff) + rshift(sum, 16)
	return band(bnot(sum), 0xffff)
end

--- The same for a 32-bit field, such as an IPv4 address.
function _M.csum_replace32(csum, old, new)
	local replace16 = _M.csum_replace16
	csum = replace16(csum, rshift(old, 16), rshift(new, 16))
	return replace16(csum, band(old, 0xffff), band(new, 0xffff))
end

return _M

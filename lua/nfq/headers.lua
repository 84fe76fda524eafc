--- nfq.headers: IPv4, IPv6, UDP, TCP and ICMP headers laid over packet
-- memory through the FFI, without copies. A view is nil when the bytes are
-- not a whole header; nothing here reads outside the given length.
local ffi = require "ffi"
local bit = require "bit"
require "nfq.cdef"

local band, rshift, bswap, bnot = bit.band, bit.rshift, bit.bswap, bit.bnot
local ffi_cast, ffi_string = ffi.cast, ffi.string

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
}, address_methods) })

ffi.metatype("struct nfq_ipv6_hdr", { __index = getters({
	version = function(h) return rshift(be32(h.vtc_flow_be), 28) end,
	traffic_class = function(h) return band(rshift(be32(h.vtc_flow_be), 20), 0xff) end,
	flow_label = function(h) return band(be32(h.vtc_flow_be), 0xfffff) end,
	payload_length = function(h) return be16(h.payload_length_be) end,
}, address_methods) })

ffi.metatype("struct nfq_udp_hdr", { __index = getters {
	sport = function(h) return be16(h.sport_be) end,
	dport = function(h) return be16(h.dport_be) end,
	length = function(h) return be16(h.length_be) end,
	checksum = function(h) return be16(h.checksum_be) end,
} })

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
} })

ffi.metatype("struct nfq_icmp_hdr", { __index = getters {
	checksum = function(h) return be16(h.checksum_be) end,
} })

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

--- nfq.geneva: Geneva's packet-manipulation strategies (github.com/Kkevsterrr/geneva)
-- run on queued packets, giving the packets Geneva's own engine gives.
--
-- Design. geneva.parse() reads the DNA into trees of actions and compiles
-- each tree into closures, one per action, which call each other as Geneva's
-- tree walk does: a packet on its way through a tree is four values (a
-- packet buffer, the header fields scapy would recompute, a delay, the offset
-- of its payload) passed as arguments, never a table, so that running a
-- strategy allocates nothing. Geneva's packets are scapy objects: a tamper
-- "deletes" the checksums so that scapy computes them again when the packet
-- is built, a fragment deletes lengths too, and everything else keeps the
-- value it was parsed with (a UDP checksum goes stale). The flags below are
-- those deletions; emit() applies them when a packet leaves a tree, as
-- scapy's bytes() does. Field offsets come from the packet as it arrived
-- (scapy keeps its parse: a tampered data offset moves no bytes).
local ffi = require "ffi"
local bit = require "bit"
local nfq = require "nfq"

local C = nfq._C
local band, bor, bxor, bnot, lshift, rshift = bit.band, bit.bor, bit.bxor, bit.bnot, bit.lshift, bit.rshift
local tobit = bit.tobit
local floor, huge = math.floor, math.huge
local type, error, tostring, tonumber, pairs, ipairs, setmetatable, getmetatable, pcall = type, error, tostring,
	tonumber, pairs, ipairs, setmetatable, getmetatable, pcall
local byte, char, sub, find, format = string.byte, string.char, string.sub, string.find, string.format
local concat = table.concat
local ffi_copy, ffi_string = ffi.copy, ffi.string
local send, now = nfq.send, nfq.now
local const_bytes_t = ffi.typeof("const uint8_t *")

local _M = { _VERSION = nfq._VERSION }

-- A packet's whole way through a strategy (the dispatch loop, the trees,
-- the sends) is one trace, and a fragment in a fragment has more constants
-- than LuaJIT's default limit of 500 lets a trace have: it would give up on
-- the loop, which then runs interpreted and allocates. Raised for the Lua
-- state that loads this module.
if jit and jit.opt then jit.opt.start("maxirconst=1000") end

if not pcall(function() return ffi.C.nfq_geneva_memmove end) then
	ffi.cdef [[void *nfq_geneva_memmove(void *dest, const void *src, size_t n) asm("memmove");]]
end
local memmove = ffi.C.nfq_geneva_memmove

-- Header fields that scapy computes when the packet is built (deleted).
local IP_LEN, IP_CSUM, TCP_CSUM, TCP_DATAOFS = 1, 2, 4, 8
-- The packet lost its transport header (a load tamper of IP, a fragment).
local NO_L4 = 16

--------------------------------------------------------------------------
-- Random draws (corrupt): xorshift32, seedable
--------------------------------------------------------------------------

local rng_state = 0x2545f491

--- Seed the generator that corrupt draws from: the same seed gives the same draws.
function _M.seed(n)
	if type(n) ~= "number" or n ~= floor(n) then
		error("nfq.geneva.seed: the seed must be an integer, got " .. nfq._shown(n), 2)
	end
	rng_state = tobit(n % 4294967296)
	if rng_state == 0 then rng_state = 0x2545f491 end
end

local function next_u32()
	local x = rng_state
	x = bxor(x, lshift(x, 13))
	x = bxor(x, rshift(x, 17))
	x = bxor(x, lshift(x, 5))
	rng_state = x
	return x % 4294967296
end

-- An integer from lo to hi, both included.
local function randint(lo, hi)
	return lo + next_u32() % (hi - lo + 1)
end

--------------------------------------------------------------------------
-- The packet being handled: where its headers are (module upvalues, set
-- by apply() before any tree runs; single-threaded per Lua state)
--------------------------------------------------------------------------

local l4off, l4proto, has_tcp, has_udp, has_dns = 0, 0, false, false, false
local in_pay = 0

local function get16(d, o) return d[o] * 256 + d[o + 1] end
local function put16(d, o, v) d[o], d[o + 1] = band(rshift(v, 8), 255), band(v, 255) end
local function get32(d, o) return ((d[o] * 256 + d[o + 1]) * 256 + d[o + 2]) * 256 + d[o + 3] end
local function put32(d, o, v)
	d[o], d[o + 1], d[o + 2], d[o + 3] = band(rshift(v, 24), 255), band(rshift(v, 16), 255),
		band(rshift(v, 8), 255), band(v, 255)
end

-- Read the layout of an IPv4 packet into the upvalues above: false when it
-- is not one Geneva parses (it handles IPv4 only).
local function read_layout(d, len)
	if len < 20 or rshift(d[0], 4) ~= 4 then return false end
	local ihl = band(d[0], 15) * 4
	if ihl < 20 or ihl > len then return false end
	l4off, l4proto = ihl, d[9]
	has_tcp, has_udp, has_dns = false, false, false
	in_pay = ihl
	-- scapy parses the transport header of a first fragment, not of later ones
	if band(d[6], 0x1f) + d[7] ~= 0 then return true end
	if l4proto == 6 and len >= ihl + 20 then
		local hl = rshift(d[ihl + 12], 4) * 4
		if hl >= 20 and ihl + hl <= len then
			has_tcp, in_pay = true, ihl + hl
		end
	elseif l4proto == 17 and len >= ihl + 8 then
		has_udp, in_pay = true, ihl + 8
		local sport, dport = get16(d, ihl), get16(d, ihl + 2)
		has_dns = (sport == 53 or dport == 53) and len >= in_pay + 12
	end
	return true
end

--------------------------------------------------------------------------
-- Fields: where they are and how they read, set and draw
--------------------------------------------------------------------------

-- Numeric fields: { layer, byte offset in the layer, bits, shift, corrupt draw }.
-- A field of 8, 16 or 32 bits at a byte boundary has shift 0; smaller ones
-- live in one byte or in the 16 bits at offset (IP flags and fragment).
local TCP_FLAG_LETTERS = "FSRPAUECN"
local IP_FLAG_NAMES = { "MF", "DF", "evil" }

local function draw_bits(bits) return function() return next_u32() % 2 ^ bits end end
local function draw_range(lo, hi) return function() return randint(lo, hi) end end
local tcp_flag_choices = { 2, 16, 18, 24, 17, 4, 8, 1, 20, 0 } -- S A SA PA FA R P F RA ''

local numeric = {
	IP = {
		version = { 0, 4, 4, draw_bits(4) }, ihl = { 0, 4, 0, draw_bits(4) }, tos = { 1, 8, 0, draw_bits(8) },
		len = { 2, 16, 0, draw_range(1, 500) }, id = { 4, 16, 0, draw_bits(16) },
		flags = { 6, 3, 13, draw_bits(3) }, frag = { 6, 13, 0, draw_bits(13) }, ttl = { 8, 8, 0, draw_bits(8) },
		proto = { 9, 8, 0, draw_bits(8) }, chksum = { 10, 16, 0, draw_range(1, 65535) },
		src = { 12, 32, 0, draw_bits(32) }, dst = { 16, 32, 0, draw_bits(32) },
	},
	TCP = {
		sport = { 0, 16, 0, draw_bits(16) }, dport = { 2, 16, 0, draw_bits(16) },
		seq = { 4, 32, 0, draw_bits(32) }, ack = { 8, 32, 0, draw_bits(32) },
		dataofs = { 12, 4, 4, draw_range(1, 15) }, reserved = { 12, 3, 1, draw_bits(3) },
		flags = { 12, 9, 0, function()
			if next_u32() % 2 == 0 then return tcp_flag_choices[randint(1, #tcp_flag_choices)] end
			return next_u32() % 512
		end },
		window = { 14, 16, 0, function() return randint(1, 19) * 10 end },
		chksum = { 16, 16, 0, draw_range(1, 65535) }, urgptr = { 18, 16, 0, draw_bits(16) },
	},
	UDP = {
		sport = { 0, 16, 0, draw_bits(16) }, dport = { 2, 16, 0, draw_bits(16) },
		len = { 4, 16, 0, draw_bits(16) }, chksum = { 6, 16, 0, draw_bits(16) },
	},
	DNS = {
		id = { 0, 16, 0, draw_bits(16) }, qr = { 2, 1, 7, draw_bits(1) }, opcode = { 2, 4, 3, draw_bits(4) },
		aa = { 2, 1, 2, draw_bits(1) }, tc = { 2, 1, 1, draw_bits(1) }, rd = { 2, 1, 0, draw_bits(1) },
		ra = { 3, 1, 7, draw_bits(1) }, z = { 3, 1, 6, draw_bits(1) }, ad = { 3, 1, 5, draw_bits(1) },
		cd = { 3, 1, 4, draw_bits(1) }, rcode = { 3, 4, 0, draw_bits(4) },
		qdcount = { 4, 16, 0, draw_bits(16) }, ancount = { 6, 16, 0, draw_bits(16) },
		nscount = { 8, 16, 0, draw_bits(16) }, arcount = { 10, 16, 0, draw_bits(16) },
	},
	DNSQR = {
		qtype = { 0, 16, 0, draw_bits(16) }, qclass = { 2, 16, 0, draw_bits(16) },
	},
}

-- TCP options by Geneva's names: kind, and how a value is written (the
-- format scapy packs it with).
local tcp_options = {
	eol = { 0, "eol" }, nop = { 1, "nop" }, mss = { 2, "u16" }, wscale = { 3, "u8" }, sackok = { 4, "none" },
	sack = { 5, "none" }, timestamp = { 8, "ts" }, altchksum = { 14, "alt" }, altchksumopt = { 15, "none" },
	md5header = { 19, "md5" }, uto = { 28, "u16" },
}
-- Kinds scapy names in a way Geneva does not map back: an option of these
-- kinds in a packet is never found, so a tamper appends another.
local unmatched_kinds = { [19] = true, [25] = true, [29] = true, [34] = true }

-- The fields of each layer, as Geneva's layers/*.py list them.
local layer_fields = {
	IP = "version ihl tos len id flags frag ttl proto chksum src dst load",
	TCP = "sport dport seq ack dataofs reserved flags window chksum urgptr load options-eol options-nop "
		.. "options-mss options-wscale options-sackok options-sack options-timestamp options-altchksum "
		.. "options-altchksumopt options-md5header options-uto",
	UDP = "sport dport chksum len load",
	DNS = "id qr opcode aa tc rd ra z ad cd qd rcode qdcount ancount nscount arcount",
	DNSQR = "qname qtype qclass",
}
local known_fields = {}
for layer, list in pairs(layer_fields) do
	known_fields[layer] = {}
	for f in list:gmatch("%S+") do known_fields[layer][f] = true end
end
local LAYERS = "IP, TCP, UDP, DNS or DNSQR"

-- Where a layer starts in the packet (the DNS question after the DNS
-- header's 12 bytes and the first name), or nil when the packet has none.
local function qname_end(d, len, o)
	while o < len do
		local n = d[o]
		if n == 0 then return o + 1 end
		if n >= 0xc0 then return o + 2 end
		o = o + 1 + n
	end
	return nil
end

local function layer_offset(layer, d, len, fl, pay)
	if layer == "IP" then return 0 end
	if band(fl, NO_L4) ~= 0 then return nil end
	if layer == "TCP" then return has_tcp and l4off or nil end
	if layer == "UDP" then return has_udp and l4off or nil end
	if not has_dns then return nil end
	if layer == "DNS" then return pay end
	if get16(d, pay + 4) == 0 then return nil end
	local e = qname_end(d, len, pay + 12)
	if not e or e + 4 > len then return nil end
	return e
end

local function read_numeric(d, o, f)
	local off, bits, shift = f[1], f[2], f[3]
	if bits == 32 then return get32(d, o + off) end
	if bits == 16 then return get16(d, o + off) end
	if bits == 13 or bits == 3 and shift == 13 then
		return band(rshift(get16(d, o + off), shift), 2 ^ bits - 1)
	end
	if bits == 9 then return band(get16(d, o + off), 511) end
	return band(rshift(d[o + off], shift), 2 ^ bits - 1)
end

local function write_numeric(d, o, f, v)
	local off, bits, shift = f[1], f[2], f[3]
	v = v % 2 ^ bits
	if bits == 32 then
		put32(d, o + off, v)
	elseif bits == 16 then
		put16(d, o + off, v)
	elseif bits == 13 or bits == 3 and shift == 13 or bits == 9 then
		local mask = lshift(2 ^ bits - 1, shift)
		put16(d, o + off, bor(band(get16(d, o + off), bnot(mask)), lshift(v, shift)))
	else
		local mask = lshift(2 ^ bits - 1, shift)
		d[o + off] = bor(band(d[o + off], bnot(mask)), lshift(v, shift))
	end
end

--------------------------------------------------------------------------
-- Values in the DNA
--------------------------------------------------------------------------

-- Python's int() of a string, for the values Geneva passes through it.
local function python_int(s)
	local sign, digits = s:match("^%s*([+-]?)([%d_]+)%s*$")
	if not digits or digits:find("^_") or digits:find("_$") or digits:find("__") then return nil end
	local n = tonumber((digits:gsub("_", "")))
	if sign == "-" then n = -n end
	return n
end

local function flag_mask(text, letters)
	local mask = 0
	for i = 1, #text do
		local at = find(letters, sub(text, i, i), 1, true)
		if not at then return nil end
		mask = bor(mask, lshift(1, at - 1))
	end
	return mask
end

local function ip_flags_mask(text)
	if text == "" then return 0 end
	local mask = 0
	for name in (text .. "+"):gmatch("([^+]*)%+") do
		local found
		for i, n in ipairs(IP_FLAG_NAMES) do
			if n == name then found = i end
		end
		if not found then return nil end
		mask = bor(mask, lshift(1, found - 1))
	end
	return mask
end

local function ip_flags_text(mask)
	local names = {}
	for i, n in ipairs(IP_FLAG_NAMES) do
		if band(mask, lshift(1, i - 1)) ~= 0 then names[#names + 1] = n end
	end
	return concat(names, "+")
end

local function ipv4_number(text)
	local a, b, c, d = text:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
	a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
	if not a or a > 255 or b > 255 or c > 255 or d > 255 then return nil end
	return ((a * 256 + b) * 256 + c) * 256 + d
end

local function ipv4_text(n)
	return format("%d.%d.%d.%d", floor(n / 16777216) % 256, floor(n / 65536) % 256, floor(n / 256) % 256, n % 256)
end

-- urllib.parse.unquote, then UTF-8 as Python encodes what it decoded
-- (bytes that are not UTF-8 become U+FFFD), then Geneva's two placeholders.
local DNS_REQUEST = "\0009ib\129\128\0\1\0\1\0\0\0\1\8faceface\3com\0\0\1\0\1\192\12\0\1\0\1\0\0\1+\0\4\199\1912I"
	.. "\0\0)\2\0\0\0\0\0\0\0"
local HTTP_REQUEST = "GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n"
local function load_bytes(value)
	local raw = value:gsub("%%(%x%x)", function(h) return char(tonumber(h, 16)) end)
	local out, i = {}, 1
	while i <= #raw do
		local c = byte(raw, i)
		local n = c < 0x80 and 1 or c >= 0xc2 and c < 0xe0 and 2 or c >= 0xe0 and c < 0xf0 and 3
			or c >= 0xf0 and c < 0xf5 and 4 or 0
		local ok = n > 0 and i + n - 1 <= #raw
		for k = 1, n - 1 do
			if ok then
				local cc = byte(raw, i + k)
				ok = cc >= 0x80 and cc < 0xc0
			end
		end
		if ok then
			out[#out + 1] = sub(raw, i, i + n - 1)
			i = i + n
		else
			out[#out + 1] = "\239\191\189"
			i = i + 1
		end
	end
	local s = concat(out)
	s = s:gsub("__DNS_REQUEST__", function() return DNS_REQUEST end)
	return (s:gsub("__HTTP_REQUEST__", function() return HTTP_REQUEST end))
end

-- The loads a corrupt draws from: nothing, the placeholders, or 10 letters and digits.
local LOAD_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
local random_load_buf = ffi.new("uint8_t[10]")

--------------------------------------------------------------------------
-- The parser
--------------------------------------------------------------------------

local ParseError = {}

local function fail(pos, msg)
	error(setmetatable({ pos = pos, msg = msg }, ParseError), 0)
end

local function shown_text(s)
	if s == "" then return "the end" end
	return format("%q", s)
end

-- Trigger: [PROTO:field:value] or [PROTO:field:value:gas]; value may end in *.
local function parse_trigger(text, pos)
	local parts, start = {}, 1
	while true do
		local at = find(text, ":", start, true)
		if not at then
			parts[#parts + 1] = { sub(text, start), pos + start - 1 }
			break
		end
		parts[#parts + 1] = { sub(text, start, at - 1), pos + start - 1 }
		start = at + 1
	end
	if #parts < 3 or #parts > 4 then
		fail(pos + #text, "a trigger is [PROTOCOL:field:value] or [PROTOCOL:field:value:gas], got [" .. text .. "]")
	end
	-- Geneva's pattern takes the last colon as the gas one only with four parts
	local proto, field = parts[1][1], parts[2][1]
	local gas
	local value_text, value_pos = parts[3][1], parts[3][2]
	if #parts == 4 then
		local g = parts[4][1]
		gas = python_int(g)
		if not gas then fail(parts[4][2], "the gas of a trigger is an integer, got " .. shown_text(g)) end
	end
	if not known_fields[proto] then
		fail(pos, "expected a protocol (" .. LAYERS .. "), got " .. shown_text(proto))
	end
	if not known_fields[proto][field] then
		fail(parts[2][2], ("%s has no field %s"):format(proto, shown_text(field)))
	end
	local t = { proto = proto, field = field, gas = gas, text = value_text }
	if sub(value_text, -1) == "*" then
		t.wildcard, value_text = true, sub(value_text, 1, -2)
	end
	t.value_text = value_text
	local f = numeric[proto] and numeric[proto][field]
	if field == "flags" and proto == "TCP" and not python_int(value_text) then
		t.mask = flag_mask(value_text, TCP_FLAG_LETTERS)
		if not t.mask then
			fail(value_pos, "TCP flags are letters of FSRPAUECN, got " .. shown_text(value_text))
		end
	elseif field == "flags" and proto == "IP" and not python_int(value_text) then
		t.mask = ip_flags_mask(value_text)
		if not t.mask then fail(value_pos, "IP flags are MF, DF and evil joined with +, got " .. shown_text(value_text)) end
	elseif (field == "src" or field == "dst") and proto == "IP" then
		t.addr = ipv4_number(value_text)
		if not t.addr and not t.wildcard then
			fail(value_pos, "expected an IPv4 address, got " .. shown_text(value_text))
		end
	elseif f then
		t.number = python_int(value_text)
		if not t.number and not (t.wildcard and value_text:match("^%d*$")) then
			fail(value_pos, ("%s:%s is a number, got %s"):format(proto, field, shown_text(value_text)))
		end
	elseif field == "qd" then
		fail(parts[2][2], "DNS:qd (the whole question) is not supported; use DNSQR:qname, qtype or qclass")
	end
	return t
end

local function parse_number(text, pos, what)
	local n = python_int(text)
	if not n then fail(pos, ("%s is an integer, got %s"):format(what, shown_text(text))) end
	return n
end

local ACTIONS = "duplicate, tamper, fragment, drop or sleep"

--- The colon-separated fields of an action's {parameters}, empty ones kept.
local function colon_fields(params)
	local fields = {}
	for part in ((params or "") .. ":"):gmatch("([^:]*):") do fields[#fields + 1] = part end
	return fields
end

-- One action with its parameters: name, or name{params}.
local function parse_action(text, pos, direction)
	local name, params = text:match("^([%a_]*)(.*)$")
	local node = { name = name }
	if params ~= "" then
		if sub(params, 1, 1) ~= "{" then
			fail(pos + #name, "expected '{', '(' or the end of the action, got " .. shown_text(sub(params, 1, 1)))
		end
		if sub(params, -1) ~= "}" then fail(pos + #text, "expected '}' to close the parameters of " .. name) end
		if find(params, "{", 2, true) or find(params, "}", 1, true) ~= #params then
			fail(pos + #name, "the parameters of " .. name .. " hold a brace")
		end
		params = sub(params, 2, -2)
	else
		params = nil
	end
	local ppos = pos + #name + 1
	if name == "duplicate" or name == "drop" then
		if params then fail(ppos, name .. " takes no parameters") end
	elseif name == "sleep" then
		node.time = 1
		if params and params ~= "" then
			node.time = tonumber(params)
			if not node.time or node.time < 0 or node.time ~= node.time or node.time == huge then
				fail(ppos, "sleep{seconds} takes a number of seconds, got " .. shown_text(params))
			end
		end
	elseif name == "tamper" then
		local p = colon_fields(params)
		if #p < 3 or #p > 4 then
			fail(ppos, "tamper takes {PROTOCOL:field:corrupt} or {PROTOCOL:field:replace|add:value}")
		end
		local proto, field, kind, value = p[1], p[2], p[3], p[4]
		if not known_fields[proto] then fail(ppos, "expected a protocol (" .. LAYERS .. "), got " .. shown_text(proto)) end
		local fpos = ppos + #proto + 1
		if not known_fields[proto][field] then fail(fpos, ("%s has no field %s"):format(proto, shown_text(field))) end
		local kpos = fpos + #field + 1
		if kind ~= "replace" and kind ~= "corrupt" and kind ~= "add" then
			fail(kpos, "expected replace, corrupt or add, got " .. shown_text(kind))
		end
		if (kind == "corrupt") ~= (value == nil) then
			fail(kpos + #kind, kind == "corrupt" and "corrupt takes no value" or kind .. " takes a value: " .. kind .. ":VALUE")
		end
		if field == "qd" or field == "qname" then
			fail(fpos, ("%s:%s cannot be tampered here (Geneva rebuilds the DNS message for it)"):format(proto, field))
		end
		node.proto, node.field, node.kind = proto, field, kind
		local vpos = kpos + #kind + 1
		local f = numeric[proto] and numeric[proto][field]
		local option = field:match("^options%-(.*)$")
		node.option = option and tcp_options[option]
		if value then
			node.value_text = value
			if field == "load" then
				if kind == "add" then fail(kpos, "a load cannot be added to; use replace") end
				node.load = load_bytes(value)
			elseif option then
				if kind == "add" then fail(kpos, "a TCP option cannot be added to; use replace") end
				local how = node.option[2]
				if how == "md5" then
					if value ~= "" and (#value % 2 ~= 0 or #value > 32 or value:find("%X") or python_int(value)) then
						fail(vpos, "options-md5header takes up to 32 hex digits (not all decimal), got " .. shown_text(value))
					end
					node.bytes = value:gsub("%x%x", function(h) return char(tonumber(h, 16)) end)
				elseif how == "u8" or how == "u16" or how == "ts" or how == "alt" then
					node.number = value == "" and 0 or python_int(value)
					if not node.number or node.number < 0 then fail(vpos, field .. " takes a number, got " .. shown_text(value)) end
				elseif value ~= "" and how ~= "eol" and how ~= "nop" then
					fail(vpos, field .. " takes no value (replace:), got " .. shown_text(value))
				end
				node.value_text = python_int(value) and tostring(python_int(value)) or value
			elseif field == "flags" and not python_int(value) then
				if kind == "add" then fail(vpos, "add takes a number, got " .. shown_text(value)) end
				node.number = proto == "TCP" and flag_mask(value, TCP_FLAG_LETTERS) or ip_flags_mask(value)
				if not node.number then
					fail(vpos, proto == "TCP" and "TCP flags are letters of FSRPAUECN, got " .. shown_text(value)
						or "IP flags are MF, DF and evil joined with +, got " .. shown_text(value))
				end
			elseif (field == "src" or field == "dst") and proto == "IP" and kind == "replace" then
				node.number = ipv4_number(value)
				if not node.number then fail(vpos, "expected an IPv4 address, got " .. shown_text(value)) end
			else
				node.number = python_int(value)
				if not node.number then fail(vpos, ("%s:%s takes a number, got %s"):format(proto, field, shown_text(value))) end
				if kind == "replace" and (node.number < 0 or node.number >= 2 ^ f[2]) then
					fail(vpos, ("%s:%s is %d bits: 0 to %d, got %s"):format(proto, field, f[2], 2 ^ f[2] - 1, value))
				end
				node.value_text = tostring(node.number)
			end
		end
	elseif name == "fragment" then
		local p = colon_fields(params)
		if #p < 3 or #p > 4 then
			fail(ppos, "fragment takes {ip|tcp:offset:True|False} or {ip|tcp:offset:True|False:overlap}")
		end
		if p[1] ~= "tcp" and p[1] ~= "ip" then fail(ppos, "expected tcp or ip, got " .. shown_text(p[1])) end
		node.segment = p[1] == "tcp"
		local spos = ppos + #p[1] + 1
		node.size = parse_number(p[2], spos, "the fragment offset")
		-- Geneva's engine crashes (ip) or cuts from the end and moves the
		-- sequence number back (tcp, Python's negative slices) on the others
		if node.size < -1 then fail(spos, "the fragment offset is -1 (half) or at least 0, got " .. p[2]) end
		local opos = spos + #p[2] + 1
		if p[3] ~= "True" and p[3] ~= "False" then fail(opos, "expected True or False, got " .. shown_text(p[3])) end
		node.in_order = p[3] == "True"
		node.overlap = p[4] and parse_number(p[4], opos + #p[3] + 1, "the overlap") or 0
		if node.overlap < 0 then fail(opos + #p[3] + 1, "the overlap is at least 0") end
	else
		fail(pos, "expected an action (" .. ACTIONS .. "), got " .. shown_text(name))
	end
	if direction == "in" and (name == "duplicate" or name == "fragment" or name == "sleep") then
		fail(pos, name .. " is for outbound trees; an inbound tree takes tamper and drop")
	end
	node.branching = name == "duplicate" or name == "fragment"
	node.terminal = name == "drop"
	return node
end

-- An action and its subtree: action, or action(left,right).
local function parse_node(s, i, j, direction)
	if i > j then return nil end
	local paren = find(s, "(", i, true)
	if not paren or paren > j then
		return parse_action(sub(s, i, j), i, direction)
	end
	local node = parse_action(sub(s, i, paren - 1), i, direction)
	-- the comma at depth one splits left from right, as Geneva's parser does
	local depth, comma = 0, nil
	for k = paren, j do
		local c = sub(s, k, k)
		if c == "(" then
			depth = depth + 1
		elseif c == ")" then
			depth = depth - 1
			if depth == 0 and k ~= j then
				fail(k + 1, "expected the end of the action after ')', got " .. shown_text(sub(s, k + 1, j)))
			end
			if depth < 0 then fail(k, "a ')' without its '('") end
		elseif c == "," and depth == 1 and not comma then
			comma = k
		end
	end
	if depth ~= 0 then fail(j + 1, "expected ')' to close the '(' at " .. paren) end
	if not comma then fail(paren, "children go in (left,right), with the comma even when one is empty") end
	node.left = parse_node(s, paren + 1, comma - 1, direction)
	node.right = parse_node(s, comma + 1, j - 1, direction)
	if node.right and not node.branching then
		fail(comma + 1, node.name .. " has one child, on the left: (child,)")
	end
	if node.terminal and node.left then fail(paren, "drop has no children") end
	return node
end

-- One tree: [trigger]-actions-| (the "-|" or "|" optional at the end of a forest).
local function parse_tree(s, i, j, direction)
	if sub(s, i, i) ~= "[" then fail(i, "expected '[' to start a trigger, got " .. shown_text(sub(s, i, i))) end
	local close = find(s, "]", i, true)
	if not close or close > j then fail(j + 1, "expected ']' to close the trigger") end
	local trigger = parse_trigger(sub(s, i + 1, close - 1), i + 1)
	if sub(s, close + 1, close + 1) ~= "-" then
		fail(close + 1, "expected '-' after the trigger, got " .. shown_text(sub(s, close + 1, close + 1)))
	end
	local last = j
	if sub(s, last, last) == "-" then last = last - 1 end
	return { trigger = trigger, root = parse_node(s, close + 2, last, direction), direction = direction }
end

local function parse_forest(s, i, j, direction, into)
	local k = i
	while k <= j do
		local c = sub(s, k, k)
		if c:match("%s") then
			k = k + 1
		else
			local bar = find(s, "|", k, true)
			local stop = (bar and bar <= j) and bar - 1 or j
			local space = find(s, "%s", k)
			if space and space <= stop then fail(space, "a tree has no spaces; end each tree with -|") end
			into[#into + 1] = parse_tree(s, k, stop, direction)
			k = stop + 2
		end
	end
end

--------------------------------------------------------------------------
-- Canonical form (Geneva's str())
--------------------------------------------------------------------------

local function trigger_string(t)
	local s = t.proto .. ":" .. t.field .. ":" .. (t.number and not t.wildcard and tostring(t.number) or t.value_text)
		.. (t.wildcard and "*" or "")
	if t.gas then s = s .. ":" .. t.gas end
	return s
end

local function action_string(n)
	if n.name == "tamper" then
		if n.kind == "corrupt" then return ("tamper{%s:%s:corrupt}"):format(n.proto, n.field) end
		return ("tamper{%s:%s:%s:%s}"):format(n.proto, n.field, n.kind, n.value_text)
	elseif n.name == "fragment" then
		return ("fragment{%s:%d:%s%s}"):format(n.segment and "tcp" or "ip", n.size, n.in_order and "True" or "False",
			n.overlap ~= 0 and ":" .. n.overlap or "")
	elseif n.name == "sleep" then
		return ("sleep{%s}"):format(format("%g", n.time))
	end
	return n.name
end

local function node_string(n)
	if not n then return "" end
	local s = action_string(n)
	if n.left or n.right then
		s = s .. "(" .. node_string(n.left) .. "," .. node_string(n.right) .. ")"
	end
	return s
end

local function tree_string(t)
	local s = "[" .. trigger_string(t.trigger) .. "]-" .. node_string(t.root)
	if sub(s, -1) ~= "-" then s = s .. "-" end
	return s .. "|"
end

local function forest_string(trees)
	local parts = {}
	for i, t in ipairs(trees) do parts[i] = tree_string(t) end
	return concat(parts, " ")
end

--------------------------------------------------------------------------
-- Compiling: triggers
--------------------------------------------------------------------------

local quote_safe = {}
for c in ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/"):gmatch(".") do
	quote_safe[byte(c)] = true
end

-- Geneva reads a load as urllib.parse.quote(load.decode("utf-8", "ignore")).
local function quoted_load(d, from, to)
	local out = {}
	local i = from
	while i < to do
		local c = d[i]
		local n = c < 0x80 and 1 or c >= 0xc2 and c < 0xe0 and 2 or c >= 0xe0 and c < 0xf0 and 3
			or c >= 0xf0 and c < 0xf5 and 4 or 0
		local ok = n > 0 and i + n <= to
		for k = 1, n - 1 do
			if ok then ok = d[i + k] >= 0x80 and d[i + k] < 0xc0 end
		end
		if ok then
			for k = 0, n - 1 do
				local b = d[i + k]
				out[#out + 1] = quote_safe[b] and char(b) or format("%%%02X", b)
			end
			i = i + n
		else
			i = i + 1
		end
	end
	return concat(out)
end

local function dns_qname(d, len, o)
	local labels = {}
	while o < len and d[o] ~= 0 and d[o] < 0xc0 do
		labels[#labels + 1] = ffi_string(d + o + 1, d[o])
		o = o + 1 + d[o]
	end
	return concat(labels, ".") .. "."
end

-- The value Geneva's trigger compares with, as a string (for wildcards and
-- the fields that are text).
local function field_text(t, d, len, o)
	local proto, field = t.proto, t.field
	if field == "load" then
		local from = proto == "IP" and l4off or in_pay
		return quoted_load(d, from, len)
	elseif field == "qname" then
		return dns_qname(d, len, in_pay + 12)
	elseif proto == "IP" and field == "flags" then
		return ip_flags_text(read_numeric(d, o, numeric.IP.flags))
	elseif proto == "IP" and (field == "src" or field == "dst") then
		return ipv4_text(read_numeric(d, o, numeric.IP[field]))
	end
	return nil
end

-- The first value of a TCP option in the packet as Geneva reads it, or nil.
local function option_value(d, kind)
	local o, stop = l4off + 20, in_pay
	while o < stop do
		local k = d[o]
		if k == 0 then return nil end
		if k == 1 then
			o = o + 1
		else
			local olen = o + 1 < stop and d[o + 1] or 0
			if olen < 2 then olen = 2 end
			if k == kind and not unmatched_kinds[k] then
				-- what the header holds of a length that runs past it
				local n = o + olen > stop and stop - o - 2 or olen - 2
				if n == 1 then return d[o + 2] end
				if n == 2 or n == 3 and k ~= 14 then return get16(d, o + 2) end
				if n == 3 then return d[o + 2] end
				if n >= 4 then return get32(d, o + 2) end
				return nil
			end
			o = o + olen
		end
	end
	return nil
end

-- A function of the packet's bytes that says whether the trigger fires.
-- Gas: a trigger with gas fires that many times; with negative gas, it
-- fires only once it has matched that many times (Geneva's bomb trigger).
local function compile_trigger(t)
	local proto, field = t.proto, t.field
	local f = numeric[proto] and numeric[proto][field]
	local option = field:match("^options%-(.*)$")
	local match
	if t.mask and not t.wildcard then
		local mask = t.mask
		match = function(d, _, o) return read_numeric(d, o, f) == mask end
	elseif t.mask then
		local mask = t.mask
		match = function(d, _, o) return band(read_numeric(d, o, f), mask) == mask end
	elseif t.addr and not t.wildcard then
		local addr = t.addr
		match = function(d, _, o) return read_numeric(d, o, f) == addr end
	elseif f and not t.wildcard and field ~= "src" and field ~= "dst" then
		local number = t.number
		match = function(d, _, o) return read_numeric(d, o, f) == number end
	elseif option then
		local kind, want = tcp_options[option][1], t.value_text
		match = function(d)
			local v = option_value(d, kind)
			local text = v and tostring(v) or ""
			if t.wildcard then return find(text, want, 1, true) ~= nil end
			return text == want
		end
	else
		local want = t.value_text
		match = function(d, len, o)
			local text = field_text(t, d, len, o) or tostring(read_numeric(d, o, f))
			if t.wildcard then return find(text, want, 1, true) ~= nil end
			return text == want
		end
	end
	local gas = t.gas
	return function(d, len)
		local o = layer_offset(proto, d, len, 0, in_pay)
		if not o or not match(d, len, o) then return false end
		if gas == nil then return true end
		if gas > 0 then
			gas = gas - 1
			return true
		elseif gas < 0 then
			gas = gas + 1
			return false
		end
		return gas == 0 and t.gas < 0
	end
end

--------------------------------------------------------------------------
-- Compiling: actions
--------------------------------------------------------------------------

local MAX_OPTIONS = 60
local option_scratch = ffi.new("uint8_t[?]", MAX_OPTIONS + 64)
-- The option being written (up to 2 + 16 bytes, md5header), and the random
-- bytes of a corrupted md5header.
local option_value_buf = ffi.new("uint8_t[20]")
local md5_buf = ffi.new("uint8_t[16]")

-- The packets a tree makes live in slots of a strategy's own memory, one
-- slot a packet: a copy is a memcpy, a length a number, and nothing but the
-- sends calls into nfq per packet, which keeps a strategy's trace short
-- enough for the JIT. SLOT leaves room past the longest IP packet for what
-- a tamper adds (a load, an option) before it is cut at 65535.
local SLOT = 65536 + 1024
local MAX_PACKET = 65535
local MAX_VERDICT = 65531 -- the longest payload a verdict carries (set_payload)
local next_slot = 0 -- the next free slot of the packet being handled

-- Rewrite the TCP options as scapy does for Geneva's set_options: the
-- options up to the first EOL (included), the one of this kind replaced in
-- place or appended, zeros to a multiple of 4. Returns the new payload
-- offset and length.
local function set_option(d, len, pay, kind, how, number, value_bytes)
	local o, stop, n = l4off + 20, pay, 0
	local replaced = false
	local new = option_value_buf
	local new_len
	if how == "eol" then
		new[0], new_len = 0, 1
	elseif how == "nop" then
		new[0], new_len = 1, 1
	elseif how == "none" then
		new[0], new[1], new_len = kind, 2, 2
	elseif how == "u8" then
		new[0], new[1], new[2], new_len = kind, 3, number % 256, 3
	elseif how == "u16" then
		new[0], new[1], new_len = kind, 4, 4
		put16(new, 2, number % 65536)
	elseif how == "ts" then
		new[0], new[1], new_len = kind, 10, 10
		put32(new, 2, number % 4294967296)
		put32(new, 6, 0)
	elseif how == "alt" then
		new[0], new[1], new[2], new_len = kind, 5, number % 256, 5
		put16(new, 3, 0)
	else -- md5: the bytes given
		local vlen = #value_bytes
		new[0], new[1], new_len = kind, 2 + vlen, 2 + vlen
		ffi_copy(new + 2, value_bytes, vlen)
	end
	local out = option_scratch
	while o < stop do
		local k = d[o]
		local span
		if k == 0 or k == 1 then
			span = 1
		else
			span = o + 1 < stop and d[o + 1] or 0
			if span < 2 then span = 2 end
			if o + span > stop then span = stop - o end
		end
		if n + span + new_len > MAX_OPTIONS then break end
		if k == kind and not replaced and not unmatched_kinds[k] then
			ffi_copy(out + n, new, new_len)
			n = n + new_len
			replaced = true
		else
			ffi_copy(out + n, d + o, span)
			if span == 2 and k > 1 then out[n + 1] = 2 end
			n = n + span
		end
		if k == 0 then break end
		o = o + span
	end
	if not replaced then
		ffi_copy(out + n, new, new_len)
		n = n + new_len
	end
	while n % 4 ~= 0 do
		out[n] = 0
		n = n + 1
	end
	local new_pay = l4off + 20 + n
	local new_len_total = len + new_pay - pay
	if new_len_total > MAX_PACKET then new_len_total = MAX_PACKET end
	if new_pay ~= pay then memmove(d + new_pay, d + pay, new_len_total - new_pay) end
	ffi_copy(d + l4off + 20, out, n)
	return new_pay, new_len_total
end

-- Replace the bytes from offset from to the end with src (a string or a
-- pointer) of n bytes: the new length.
local function set_tail(d, from, src, n)
	if from + n > MAX_PACKET then n = MAX_PACKET - from end
	ffi_copy(d + from, src, n)
	return from + n
end

local stats_names = { "duplicate", "tamper", "fragment", "drop", "sleep" }

-- A closure made by factory() from a prototype of its own: a copy of the
-- factory's bytecode, with the same upvalues. Every action of a tree then
-- runs its own function, so that the JIT sees no recursion where one kind
-- of action follows another of the kind (tamper after tamper, a fragment in
-- a fragment, tree after tree), which it would unroll or refuse.
local function fresh(factory)
	local copy = assert(loadstring(string.dump(factory)))
	local i = 1
	while debug.getupvalue(factory, i) do
		debug.upvaluejoin(copy, i, factory, i)
		i = i + 1
	end
	return copy()
end

--------------------------------------------------------------------------
-- Building packets as scapy would: lengths and checksums
--------------------------------------------------------------------------

-- Apply the deleted fields of a packet, as scapy's bytes() does.
local function finish(d, len, fl, pay)
	if band(fl, TCP_DATAOFS) ~= 0 and has_tcp and band(fl, NO_L4) == 0 then
		d[l4off + 12] = bor(band(d[l4off + 12], 0x0f), lshift(band((pay - l4off) / 4, 15), 4))
	end
	if band(fl, IP_LEN) ~= 0 then put16(d, 2, len) end
	if band(fl, TCP_CSUM) ~= 0 and has_tcp and band(fl, NO_L4) == 0 then
		local ln
		if band(fl, IP_LEN) ~= 0 then
			ln = len - l4off
		else
			ln = get16(d, 2) - band(d[0], 15) * 4
			if ln < 0 then ln = 0 end
		end
		local seed = get16(d, 12) + get16(d, 14) + get16(d, 16) + get16(d, 18) + 6 + ln
		put16(d, l4off + 16, 0)
		put16(d, l4off + 16, C.nfq_geneva_checksum(d + l4off, len - l4off, seed))
	end
	if band(fl, IP_CSUM) ~= 0 then
		put16(d, 10, 0)
		put16(d, 10, C.nfq_geneva_checksum(d, l4off, 0))
	end
end

--------------------------------------------------------------------------
-- Compiling: actions. A packet on its way is its slot s, the fields scapy
-- would compute (fl), its delay (sl) and its payload offset (pay); its
-- bytes are at base + s * SLOT, its length lens[s].
--------------------------------------------------------------------------

-- Fragment: Geneva's segment (two TCP segments of the payload, cut at size,
-- the first overlap bytes longer, every header copied) or IP fragments.
local function compile_fragment(strategy, node, left, right)
	local stats, base, lens = strategy.stats, strategy.store, strategy.lens
	local size, in_order, overlap, segment = node.size, node.in_order, node.overlap, node.segment
	local AUTO = bor(IP_LEN, IP_CSUM, TCP_CSUM, TCP_DATAOFS)
	local FRAG = bor(IP_LEN, IP_CSUM, NO_L4)
	local two = fresh(function() return function(s1, f1, pay1, s2, f2, pay2)
		if in_order then
			left(s1, f1, 0, pay1)
			right(s2, f2, 0, pay2)
		else
			left(s2, f2, 0, pay2)
			right(s1, f1, 0, pay1)
		end
	end end)
	-- Geneva duplicates what it cannot cut
	local function copy_of(s)
		local c = next_slot
		next_slot = c + 1
		ffi_copy(base + c * SLOT, base + s * SLOT, lens[s])
		lens[c] = lens[s]
		return c
	end
	if segment then
		return fresh(function() return function(s, fl, sl, pay)
			stats.fragment = stats.fragment + 1
			local d, len = base + s * SLOT, lens[s]
			local n = len - pay
			if not has_tcp or band(fl, NO_L4) ~= 0 or n <= 0 then
				local c = copy_of(s)
				left(s, fl, sl, pay)
				right(c, fl, 0, pay)
				return
			end
			finish(d, len, fl, pay)
			local c = copy_of(s)
			local cut = size
			if cut == -1 or cut > n - 1 then cut = floor(n / 2) end
			local extra = n - cut
			if overlap < extra then extra = overlap end
			lens[s] = pay + cut + extra
			local d2 = base + c * SLOT
			memmove(d2 + pay, d2 + pay + cut, n - cut)
			lens[c] = len - cut
			put32(d2, l4off + 4, (get32(d2, l4off + 4) + cut) % 4294967296)
			two(s, AUTO, pay, c, AUTO, pay)
		end end)
	end
	return fresh(function() return function(s, fl, sl, pay)
		stats.fragment = stats.fragment + 1
		local d, len = base + s * SLOT, lens[s]
		-- scapy's hasattr(packet["IP"], "load"): a payload behind the headers
		local has_load
		if band(fl, NO_L4) ~= 0 then
			has_load = len > l4off
		else
			has_load = not has_dns and len > pay
		end
		if not has_load then
			local c = copy_of(s)
			left(s, fl, sl, pay)
			right(c, fl, 0, pay)
			return
		end
		finish(d, len, fl, pay)
		local n = len - l4off
		local cut
		if size == -1 or size * 8 > n or n <= 8 then
			cut = floor(floor(n / 2) / 8) * 8
		else
			cut = size * 8
		end
		local c = copy_of(s)
		if cut == 0 then
			left(s, FRAG, 0, l4off)
			right(c, FRAG, 0, l4off)
			return
		end
		local flags_frag = get16(d, 6)
		if cut >= n then -- one fragment, and a copy of it
			two(s, FRAG, l4off, c, FRAG, l4off)
			return
		end
		-- the first: MF set, cut bytes; the second: the rest
		lens[s] = l4off + cut
		put16(d, 6, bor(flags_frag, 0x2000))
		local d2 = base + c * SLOT
		memmove(d2 + l4off, d2 + l4off + cut, n - cut)
		lens[c] = len - cut
		local offset = band(flags_frag, 0x1fff) + cut / 8
		if cut * 2 < n then -- scapy made more than two: the rest joined, flags DF
			put16(d2, 6, bor(0x4000, band(offset, 0x1fff)))
		else
			put16(d2, 6, bor(band(flags_frag, 0xe000), band(offset, 0x1fff)))
		end
		two(s, FRAG, l4off, c, FRAG, l4off)
	end end)
end

local function compile(strategy, node, emit)
	if not node then return emit end
	local stats, base, lens = strategy.stats, strategy.store, strategy.lens
	local name = node.name
	if name == "drop" then
		return fresh(function() return function() stats.drop = stats.drop + 1 end end)
	end
	local left = compile(strategy, node.left, emit)
	local right = compile(strategy, node.right, emit)
	if name == "duplicate" then
		return fresh(function() return function(s, fl, sl, pay)
			stats.duplicate = stats.duplicate + 1
			local c = next_slot
			next_slot = c + 1
			ffi_copy(base + c * SLOT, base + s * SLOT, lens[s])
			lens[c] = lens[s]
			left(s, fl, sl, pay)
			right(c, fl, 0, pay)
		end end)
	elseif name == "sleep" then
		local t = node.time
		return fresh(function() return function(s, fl, _, pay)
			stats.sleep = stats.sleep + 1
			left(s, fl, t, pay)
		end end)
	elseif name == "fragment" then
		return compile_fragment(strategy, node, left, right)
	end
	-- tamper
	local proto, field, kind = node.proto, node.field, node.kind
	local f = numeric[proto] and numeric[proto][field]
	local number = node.number
	if f then
		local draw = f[4]
		local is_ip_csum = proto == "IP" and field == "chksum"
		local is_tcp_csum = proto == "TCP" and field == "chksum"
		local is_ip_len = proto == "IP" and field == "len"
		local is_dataofs = proto == "TCP" and field == "dataofs"
		return fresh(function() return function(s, fl, sl, pay)
			stats.tamper = stats.tamper + 1
			local d, len = base + s * SLOT, lens[s]
			local o = layer_offset(proto, d, len, fl, pay)
			if o then
				local v = number
				if kind == "corrupt" then
					v = draw()
				elseif kind == "add" then
					v = read_numeric(d, o, f) + number
				end
				write_numeric(d, o, f, v)
				fl = bor(fl, IP_CSUM, (has_tcp and band(fl, NO_L4) == 0) and TCP_CSUM or 0)
				if is_ip_csum then fl = band(fl, bnot(IP_CSUM)) end
				if is_tcp_csum then fl = band(fl, bnot(TCP_CSUM)) end
				if is_ip_len then fl = band(fl, bnot(IP_LEN)) end
				if is_dataofs then fl = band(fl, bnot(TCP_DATAOFS)) end
			end
			left(s, fl, sl, pay)
		end end)
	elseif field == "load" then
		local load = node.load
		return fresh(function() return function(s, fl, sl, pay)
			stats.tamper = stats.tamper + 1
			local d, len = base + s * SLOT, lens[s]
			local o = layer_offset(proto, d, len, fl, pay)
			if o then
				local from = proto == "IP" and l4off or pay
				if kind == "corrupt" then
					local pick = randint(1, 4)
					if pick == 1 then
						lens[s] = set_tail(d, from, "", 0)
					elseif pick == 2 then
						lens[s] = set_tail(d, from, DNS_REQUEST, #DNS_REQUEST)
					elseif pick == 3 then
						lens[s] = set_tail(d, from, HTTP_REQUEST, #HTTP_REQUEST)
					else
						for i = 0, 9 do
							local k = randint(1, 36)
							random_load_buf[i] = byte(LOAD_CHARS, k)
						end
						lens[s] = set_tail(d, from, random_load_buf, 10)
					end
				else
					lens[s] = set_tail(d, from, load, #load)
				end
				fl = bor(fl, IP_LEN, IP_CSUM, (has_tcp and band(fl, NO_L4) == 0) and TCP_CSUM or 0)
				if proto == "IP" then
					fl, pay = bor(fl, NO_L4), l4off
				end
			end
			left(s, fl, sl, pay)
		end end)
	end
	-- TCP options
	local option = node.option
	local okind, how, bytes = option[1], option[2], node.bytes
	return fresh(function() return function(s, fl, sl, pay)
		stats.tamper = stats.tamper + 1
		if has_tcp and band(fl, NO_L4) == 0 then
			local v, vb = number, bytes
			if kind == "corrupt" then
				if how == "u16" then
					v = okind == 2 and randint(0, 65535) or randint(0, 255)
				elseif how == "u8" or how == "alt" then
					v = randint(0, 255)
				elseif how == "ts" then
					v = randint(0, 4294967294)
				elseif how == "md5" then
					for i = 0, 15 do md5_buf[i] = randint(0, 255) end
					vb = ffi_string(md5_buf, 16)
				end
			end
			pay, lens[s] = set_option(base + s * SLOT, lens[s], pay, okind, how, v, vb)
			fl = bor(fl, IP_LEN, IP_CSUM, TCP_CSUM, TCP_DATAOFS)
		end
		left(s, fl, sl, pay)
	end end)
end

-- How many slots a tree needs: its packet, and one more for each action
-- that makes two of one.
local function slots_of(node)
	if not node then return 0 end
	return (node.branching and 1 or 0) + slots_of(node.left) + slots_of(node.right)
end

--------------------------------------------------------------------------
-- Strategies
--------------------------------------------------------------------------

local Strategy = {}
Strategy.__index = Strategy
Strategy.__tostring = function(s)
	return forest_string(s.outbound) .. " \\/ " .. forest_string(s.inbound)
end

--- A strategy from Geneva's DNA, or nil and where the DNA is wrong and what
-- was expected there ("position 17: ...").
-- opts.send(ptr, len): sends an outbound packet (default nfq.send).
function _M.parse(dna, opts)
	if type(dna) ~= "string" then
		error("nfq.geneva.parse: the strategy must be a string, got " .. nfq._shown(dna), 2)
	end
	if opts ~= nil and (type(opts) ~= "table" or (opts.send ~= nil and not nfq._is_callable(opts.send))) then
		error("nfq.geneva.parse: opts must be a table with send, a function, got " .. nfq._shown(opts), 2)
	end
	local ok, s = pcall(function()
		local i, j = 1, #dna
		while i <= j and sub(dna, i, i):match("%s") do i = i + 1 end
		while j >= i and sub(dna, j, j):match("%s") do j = j - 1 end
		if sub(dna, i, i) == '"' then i = i + 1 end
		if j >= i and sub(dna, j, j) == '"' then j = j - 1 end
		local out, inn = {}, {}
		local split = find(dna, "\\/", i, true)
		if split and split <= j then
			if find(dna, "\\/", split + 2, true) then
				fail(find(dna, "\\/", split + 2, true), "a strategy has one \\/ between its outbound and inbound trees")
			end
			parse_forest(dna, i, split - 1, "out", out)
			parse_forest(dna, split + 2, j, "in", inn)
		else
			parse_forest(dna, i, j, "out", out)
		end
		return { outbound = out, inbound = inn }
	end)
	if not ok then
		if getmetatable(s) == ParseError then
			return nil, ("position %d: %s"):format(s.pos, s.msg)
		end
		error(s, 0)
	end
	local strategy = setmetatable(s, Strategy)
	strategy.stats = { packets = 0, matched = 0, accepted = 0, dropped = 0, sent = 0, rewritten = 0, held = 0,
		send_errors = 0, lengths_fixed = 0 }
	for _, n in ipairs(stats_names) do strategy.stats[n] = 0 end
	strategy.held = {}
	strategy.send = opts and opts.send or send
	local slots = 0
	for _, forest in ipairs { s.outbound, s.inbound } do
		for _, t in ipairs(forest) do slots = slots + 1 + slots_of(t.root) end
	end
	-- the strategy's packet memory, a slot per packet a tree can make
	strategy.store = ffi.new("uint8_t[?]", (slots > 0 and slots or 1) * SLOT)
	strategy.lens = ffi.new("int32_t[?]", slots > 0 and slots or 1)
	strategy:_build()
	return strategy
end

-- One forest as a chain of closures, one per tree (a loop over the trees
-- would leave the JIT's trace): run(d, len, pkt, outbound) says whether a
-- tree fired. Each fired tree gets a fresh copy of the packet; an outbound
-- packet is dropped before the first copy is made.
local function chain(strategy, list, i)
	local t = list[i]
	if not t then return function(_, _, _, _, fired) return fired end end
	local check, run, rest = t.check, t.run, chain(strategy, list, i + 1)
	local base, lens = strategy.store, strategy.lens
	return fresh(function() return function(d, len, pkt, outbound, fired)
		if check(d, len) then
			if not fired and outbound then pkt:drop() end
			fired = true
			local s = next_slot
			next_slot = s + 1
			ffi_copy(base + s * SLOT, d, len)
			lens[s] = len
			run(s, 0, 0, in_pay)
		end
		return (rest(d, len, pkt, outbound, fired))
	end end)
end

-- The first packet an inbound tree gives: its bytes become the packet's.
local inbound_bytes = nil

function Strategy:_build()
	local stats, held, send_packet, base, lens = self.stats, self.held, self.send, self.store, self.lens
	-- build a packet as scapy would, with the real IPv4 length
	local function build(s, fl, pay)
		local d, len = base + s * SLOT, lens[s]
		finish(d, len, fl, pay)
		if get16(d, 2) ~= len then
			-- A raw socket sets the IPv4 total length itself (raw(7)), and
			-- nfq.send refuses a length that lies: send the real one.
			put16(d, 2, len)
			put16(d, 10, 0)
			put16(d, 10, C.nfq_geneva_checksum(d, l4off, 0))
			stats.lengths_fixed = stats.lengths_fixed + 1
		end
		return d, len
	end
	local function emit_out(s, fl, sl, pay)
		local d, len = build(s, fl, pay)
		if sl > 0 then
			held[#held + 1] = { due = now() + sl, bytes = ffi_string(d, len) }
			stats.held = stats.held + 1
			return
		end
		if send_packet(d, len) then
			stats.sent = stats.sent + 1
		else
			stats.send_errors = stats.send_errors + 1
		end
	end
	-- (an inbound tree has no sleep: Geneva's parser keeps it to outbound ones)
	local function emit_in(s, fl, _, pay)
		if inbound_bytes then return end
		local d, len = base + s * SLOT, lens[s]
		-- a load or an option that grew it is cut where a verdict ends, as at 65535 for a send
		if len > MAX_VERDICT then len = MAX_VERDICT end
		finish(d, len, fl, pay)
		inbound_bytes = ffi_string(d, len)
	end
	local function forest(trees, emit)
		local list = {}
		for i, t in ipairs(trees) do
			local run = t.root and compile(self, t.root, emit) or function() end
			list[i] = { check = compile_trigger(t.trigger), run = run }
		end
		return list
	end
	self.out_trees = chain(self, forest(self.outbound, emit_out), 1)
	self.in_trees = chain(self, forest(self.inbound, emit_in), 1)
	self.out_count, self.in_count = #self.outbound, #self.inbound
end

local HOOK_PREROUTING, HOOK_INPUT = C.NFQ_HOOK_PREROUTING, C.NFQ_HOOK_INPUT

--- Give the packet what Geneva's engine gives it: outbound (OUTPUT and the
-- other hooks), dropped and replaced by the packets its trees make; inbound
-- (PREROUTING, INPUT, or direction "in"), rewritten or dropped. A packet no
-- trigger matches is accepted. Returns the verdict's name ("accept" or "drop").
function Strategy:apply(pkt, direction)
	local stats = self.stats
	stats.packets = stats.packets + 1
	local d, len = pkt:view()
	local inbound
	if direction == nil then
		local hook = pkt.hook
		inbound = hook == HOOK_PREROUTING or hook == HOOK_INPUT
	else
		inbound = direction == "in"
	end
	if (inbound and self.in_count or self.out_count) == 0 or not read_layout(d, len) then
		stats.accepted = stats.accepted + 1
		pkt:accept()
		return "accept"
	end
	next_slot = 0
	if not inbound then
		if self.out_trees(d, len, pkt, true, false) then
			stats.matched = stats.matched + 1
			stats.dropped = stats.dropped + 1
			return "drop"
		end
		stats.accepted = stats.accepted + 1
		pkt:accept()
		return "accept"
	end
	inbound_bytes = nil
	if not self.in_trees(d, len, pkt, false, false) then
		stats.accepted = stats.accepted + 1
		pkt:accept()
		return "accept"
	end
	stats.matched = stats.matched + 1
	if not inbound_bytes then
		stats.dropped = stats.dropped + 1
		pkt:drop()
		return "drop"
	end
	local bytes = inbound_bytes
	inbound_bytes = nil
	pkt:set_payload(bytes)
	stats.rewritten = stats.rewritten + 1
	pkt:accept()
	return "accept"
end

--- Send what a sleep held and is now due: call it from on_timer. Returns
-- how many left.
function Strategy:tick()
	local held = self.held
	if #held == 0 then return 0 end
	local t, count, keep = now(), 0, {}
	for _, h in ipairs(held) do
		if h.due <= t then
			count = count + 1
			if self.send(ffi.cast(const_bytes_t, h.bytes), #h.bytes) then
				self.stats.sent = self.stats.sent + 1
			else
				self.stats.send_errors = self.stats.send_errors + 1
			end
		else
			keep[#keep + 1] = h
		end
	end
	for i = 1, #held do held[i] = keep[i] end
	return count
end

_M.Strategy = Strategy
return _M

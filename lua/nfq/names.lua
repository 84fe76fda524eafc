--- nfq.names: the names packets ask for (DNS questions and answers, TLS
-- and QUIC server names, HTTP hosts), read by the C parsers of
-- src/nfq_names.h, and the DNS answer a blocklist sends back.
--
-- Each parser fills one result struct per Lua state and returns it, or nil
-- and a reason ("incomplete", "malformed: ..."). The struct is overwritten
-- by the next call of the same parser: read it, or copy what you keep,
-- before calling again. Fields are plain numbers; strings are made only by
-- the methods that return them (r:name(), r:sni(), r:host()), and *_ptr()
-- methods give a pointer and a length instead, for set lookups without a
-- string. Input is a packet or a packet buffer (its UDP or TCP payload is
-- parsed), or message bytes: a string, or a pointer and a length.
local ffi = require "ffi"
require "nfq.cdef"

local ffi_string, ffi_new, ffi_cast = ffi.string, ffi.new, ffi.cast
local type, error, tostring, floor, pairs = type, error, tostring, math.floor, pairs

local _M = {}
-- The core's FFI namespace and the reasons for its codes, set by bind().
local C, reasons

local PROTO_TCP = 6

-- Methods of the result structs. They read the struct they are called on.
local Dns = {}

--- The first question's name as a string ("" for the root).
function Dns:name() return ffi_string(self.qname, self.qname_len) end
--- The same as a pointer and a length.
function Dns:name_ptr() return self.qname, self.qname_len end
--- Read the next answer record into an_type, an_class, an_ttl,
-- an_rdlength: true, false after the last, or nil and a reason.
function Dns:next_answer()
	local rc = C.nfq_dns_next_answer(self)
	if rc == 1 then return true end
	if rc == 0 then return false end
	return nil, reasons[rc]
end
function Dns:answer_name() return ffi_string(self.an_name, self.an_name_len) end
function Dns:answer_name_ptr() return self.an_name, self.an_name_len end
--- The current answer's data: a pointer into the message and its length.
function Dns:rdata() return self.msg + self.an_rdata, self.an_rdlength end
function Dns:is_response() return self.flags >= 0x8000 end
function Dns:rcode() return self.flags % 16 end
function Dns:opcode() return floor(self.flags / 2048) % 16 end

local Tls = {}

--- The server name, or nil when the ClientHello named none.
function Tls:sni()
	if self.server_name_len == 0 then return nil end
	return ffi_string(self.server_name, self.server_name_len)
end
function Tls:sni_ptr() return self.server_name, self.server_name_len end

--- The ALPN protocols offered, as a list of strings (empty without ALPN).
function Tls:alpn()
	local list, at = {}, 0
	while at < self.alpn_len do
		local n = self.alpn_list[at]
		list[#list + 1] = ffi_string(self.alpn_list + at + 1, n)
		at = at + 1 + n
	end
	return list
end

--- Whether the ALPN list offers proto (a string), without making strings.
function Tls:offers(proto)
	local at, want = 0, #proto
	while at < self.alpn_len do
		local n = self.alpn_list[at]
		if n == want and ffi.C.memcmp(self.alpn_list + at + 1, proto, n) == 0 then return true end
		at = at + 1 + n
	end
	return false
end

--- The supported_versions entries as a list of numbers (0x0304 is TLS 1.3).
function Tls:supported_versions()
	local list = {}
	for i = 0, self.versions_count - 1 do list[i + 1] = self.versions[i] end
	return list
end

local Quic = {}
function Quic:sni() return Tls.sni(self.tls) end
function Quic:sni_ptr() return self.tls.server_name, self.tls.server_name_len end
function Quic:alpn() return Tls.alpn(self.tls) end
function Quic:offers(proto) return Tls.offers(self.tls, proto) end

local Http = {}
function Http:method() return ffi_string(self.base + self.method_off, self.method_len) end
function Http:path() return ffi_string(self.base + self.path_off, self.path_len) end
--- The Host header's host (no port), or nil when the request has none.
function Http:host()
	if self.has_host == 0 then return nil end
	return ffi_string(self.base + self.host_off, self.host_len)
end
function Http:host_ptr() return self.base + self.host_off, self.host_len end

if not pcall(function() return ffi.C.memcmp end) then
	ffi.cdef [[int memcmp(const void *a, const void *b, size_t n);]]
end
ffi.metatype("struct nfq_dns", { __index = Dns })
ffi.metatype("struct nfq_tls", { __index = Tls })
ffi.metatype("struct nfq_quic", { __index = Quic })
ffi.metatype("struct nfq_http", { __index = Http })

local reply_codes = { noerror = 0, servfail = 2, nxdomain = 3, notimp = 4, refused = 5 }
local reply_opts = { rcode = true, sinkhole = true, ttl = true }

--- The parsers, bound to the core's namespace C and to nfq.lua's helpers:
-- packet_bytes(x, len, what, level) gives an IP packet's pointer and length,
-- buffer(ptr, len) makes a packet buffer, is_packet(x) says whether x is a
-- packet or a packet buffer.
function _M.bind(core, packet_bytes, buffer, is_packet)
	C, reasons = core, {}
	for code = -C.NFQ_NAMES_ECODES, -1 do reasons[code] = ffi_string(C.nfq_names_strerror(code)) end
	local INCOMPLETE = reasons[C.NFQ_NAMES_INCOMPLETE]
	local where = ffi_new("uint32_t[2]")
	local const_bytes_t = ffi.typeof("const uint8_t *")
	local dns, tls, http = ffi_new("struct nfq_dns"), ffi_new("struct nfq_tls"), ffi_new("struct nfq_http")
	local quic
	-- The string given to the last call of each parser, kept alive while
	-- its result points into it (pointers are the caller's to keep).
	local inputs = {} -- luacheck: ignore 241 (only written: the references are the point)

	-- Message bytes: a string or a pointer and a length as they are; of a
	-- packet or buffer, its UDP or TCP payload (ptr, len, protocol).
	local function message(x, len, what)
		if type(x) == "string" then return ffi_cast(const_bytes_t, x), #x, 0 end
		if len ~= nil and not is_packet(x) then
			if type(len) ~= "number" or len < 0 or len ~= floor(len) then
				error(("nfq: %s: the length must be a non-negative integer, got %s"):format(what, tostring(len)), 3)
			end
			return x, len, 0
		end
		local ptr, n = packet_bytes(x, nil, what, 3)
		local proto = C.nfq_names_payload(ptr, n, where, where + 1)
		if proto < 0 then return nil, 0, proto end
		return ptr + where[0], where[1], proto
	end

	local names = {}

	--- A DNS message: over UDP, or over TCP (its two-byte length first).
	function names.dns(x, len)
		local ptr, n, proto = message(x, len, "nfq.dns")
		if ptr == nil then return nil, "malformed: not a UDP or TCP packet" end
		if proto == PROTO_TCP then
			if n < 2 then return nil, INCOMPLETE end
			local declared = ptr[0] * 256 + ptr[1]
			ptr, n = ptr + 2, n - 2
			if declared < n then n = declared end
		end
		if type(x) == "string" then inputs.dns = x end
		local rc = C.nfq_dns_parse(dns, ptr, n)
		if rc ~= 0 then return nil, reasons[rc] end
		return dns
	end

	--- The ClientHello at the start of TLS record bytes (a TCP payload).
	function names.tls_client_hello(x, len)
		local ptr, n = message(x, len, "nfq.tls_client_hello")
		if ptr == nil then return nil, "malformed: not a UDP or TCP packet" end
		local rc = C.nfq_tls_client_hello(tls, ptr, n)
		if rc ~= 0 then return nil, reasons[rc] end
		return tls
	end

	--- The ClientHello inside a QUIC v1/v2 client Initial (a UDP payload).
	function names.quic_initial(x, len)
		local ptr, n, proto = message(x, len, "nfq.quic_initial")
		if ptr == nil or proto == PROTO_TCP then return nil, "malformed: not a UDP packet" end
		if not quic then
			-- Made on first use: about 100 KB and three OpenSSL contexts.
			local q = ffi_new("struct nfq_quic")
			if C.nfq_quic_init(q) ~= 0 then
				error("nfq.quic_initial: OpenSSL could not set up HMAC-SHA256 and AES-128 (out of memory, "
					.. "or a libcrypto without them)", 2)
			end
			quic = ffi.gc(q, C.nfq_quic_close)
		end
		local rc = C.nfq_quic_initial(quic, ptr, n)
		if rc ~= 0 then return nil, reasons[rc] end
		return quic
	end

	--- The head of an HTTP/1.x request (a TCP payload).
	function names.http_request(x, len)
		local ptr, n = message(x, len, "nfq.http_request")
		if ptr == nil then return nil, "malformed: not a UDP or TCP packet" end
		if type(x) == "string" then inputs.http = x end
		local rc = C.nfq_http_request(http, ptr, n)
		if rc ~= 0 then return nil, reasons[rc] end
		return http
	end

	local REPLY_MAX, SINKHOLE = C.NFQ_DNS_REPLY_MAX_LEN, C.NFQ_DNS_REPLY_SINKHOLE
	local reply = ffi_new("uint8_t[?]", REPLY_MAX)

	local function check_how(how)
		if how == nil then return 3, 0, 0 end
		if type(how) == "number" then
			if how < 0 or how > 15 or how ~= floor(how) then
				error("nfq.dns_reply: an rcode is an integer from 0 to 15, got " .. how, 3)
			end
			return how, 0, 0
		end
		if how == "sinkhole" then return 0, SINKHOLE, 60 end
		if type(how) == "string" then
			local code = reply_codes[how]
			if not code then
				error(("nfq.dns_reply: unknown answer %q; give nxdomain, refused, servfail, notimp, noerror, "
					.. "sinkhole, an rcode number or a table"):format(how), 3)
			end
			return code, 0, 0
		end
		if type(how) ~= "table" then
			error("nfq.dns_reply: the answer is a name, an rcode or a table, got " .. type(how), 3)
		end
		for k in pairs(how) do
			if not reply_opts[k] then
				error(("nfq.dns_reply: unknown option %s; the options are rcode, sinkhole, ttl"):format(tostring(k)), 3)
			end
		end
		local rcode = how.rcode or (how.sinkhole and 0 or 3)
		if type(rcode) == "string" then rcode = reply_codes[rcode] end
		local ttl = how.ttl or 60
		if type(rcode) ~= "number" or rcode < 0 or rcode > 15 or rcode ~= floor(rcode)
			or type(ttl) ~= "number" or ttl < 0 or ttl > 2147483647 or ttl ~= floor(ttl) then
			error("nfq.dns_reply: rcode must be a name or 0 to 15, ttl 0 to 2^31-1", 3)
		end
		return rcode, how.sinkhole and SINKHOLE or 0, ttl
	end

	--- The answer to a DNS query packet, as a packet buffer ready for
	-- nfq.send: NXDOMAIN by default; how is an rcode (number or name),
	-- "sinkhole" (0.0.0.0 or :: for A and AAAA queries), or a table
	-- { rcode =, sinkhole =, ttl = }. nil and a reason for a packet that
	-- is not a UDP DNS query with one question.
	function names.dns_reply(query, how)
		local rcode, flags, ttl = check_how(how)
		local ptr, n = packet_bytes(query, nil, "nfq.dns_reply", 2)
		local len = C.nfq_dns_reply_build(reply, REPLY_MAX, ptr, n, rcode, flags, ttl)
		if len < 0 then return nil, reasons[len] end
		return buffer(reply, len)
	end

	return names
end

return _M

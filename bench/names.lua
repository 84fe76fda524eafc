-- What the name parsers cost per call, without the kernel: each parser on a
-- real message held in memory (spec/fixtures), called through nfq.* with a
-- pointer and a length, and the name read as a pointer. The baseline is a
-- trivial C function through the same FFI path (nfq_transport_offset on a
-- 28-byte IPv4/UDP packet). Prints ns per call and calls per second,
-- median of 5. QUIC is shown twice: one connection's packets (the keys
-- reused) and a new connection ID per packet (the keys derived each time).
--   LUA_PATH='lua/?.lua;;' LUA_CPATH='lua/?.so;;' luajit bench/names.lua
local ffi = require "ffi"
local nfq = require "nfq"

local C = nfq._C
local RUNS = 5

local function fixture(name)
	local f = assert(io.open("spec/fixtures/" .. name, "rb"))
	local s = f:read("*a")
	f:close()
	local buf = ffi.new("uint8_t[?]", #s)
	ffi.copy(buf, s, #s)
	return buf, #s
end

local function clock()
	local ts = ffi.new("struct nfq_timespec")
	return function()
		ffi.C.nfq_clock_gettime(1, ts)
		return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
	end
end
local now = clock()

local sink = 0
local function measure(n, f)
	for _ = 1, n / 10 do f() end
	local times = {}
	for r = 1, RUNS do
		local t0 = now()
		for _ = 1, n do f() end
		times[r] = (now() - t0) / n
	end
	table.sort(times)
	return times[(RUNS + 1) / 2]
end

local udp = "\69\0\0\28\0\0\0\0\64\17\0\0\127\0\0\1\127\0\0\1\0\1\0\53\0\8\0\0"
local udp_buf = ffi.new("uint8_t[28]")
ffi.copy(udp_buf, udp, 28)
local proto = ffi.new("uint8_t[1]")
local dns, dns_len = fixture("dns-cname.answer")
local query, query_len = fixture("dns-a.query")
local tls, tls_len = fixture("tls-curl.hello")
local quic, quic_len = fixture("quic-rfc9001-a2.bin")
local http = "GET /index.html HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
local http_buf = ffi.new("uint8_t[?]", #http)
ffi.copy(http_buf, http, #http)

local cases = {
	{ "baseline: a trivial C function (nfq_transport_offset)", 2000000, function()
		sink = sink + C.nfq_transport_offset(udp_buf, 28, proto)
	end },
	{ "nfq.dns: dig's query, name as a pointer", 2000000, function()
		local r = nfq.dns(query, query_len)
		local ptr, len = r:name_ptr()
		sink = sink + ptr[len - 1] + r.qtype
	end },
	{ "nfq.dns: dnsmasq's answer, 3 answers with pointers", 1000000, function()
		local r = nfq.dns(dns, dns_len)
		while r:next_answer() do sink = sink + r.an_type end
	end },
	{ "nfq.tls_client_hello: curl's ClientHello (517 bytes)", 1000000, function()
		local t = nfq.tls_client_hello(tls, tls_len)
		sink = sink + t.server_name_len
	end },
	{ "nfq.http_request: a curl-like request head", 1000000, function()
		local h = nfq.http_request(http_buf, #http)
		sink = sink + h.host_len
	end },
	{ "nfq.quic_initial: RFC 9001 A.2, same connection", 100000, function()
		local q = nfq.quic_initial(quic, quic_len)
		sink = sink + q.tls.server_name_len
	end },
	{ "nfq.quic_initial: a new connection ID each time (1 in 256 decrypts)", 50000, function()
		quic[6] = (quic[6] + 1) % 256
		local q = nfq.quic_initial(quic, quic_len)
		sink = sink + (q and 1 or 2)
	end },
}

print("| parser | ns/call (median of 5) | calls/s |")
print("|---|---:|---:|")
for _, case in ipairs(cases) do
	local t = measure(case[2], case[3])
	print(("| %s | %.0f | %.2fM |"):format(case[1], t * 1e9, 1e-6 / t))
end
assert(sink ~= 0)

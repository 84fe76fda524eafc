-- The name parsers (nfq.dns, nfq.tls_client_hello, nfq.quic_initial,
-- nfq.http_request) and the DNS answer builder (nfq.dns_reply): on real
-- messages captured from dig, dnsmasq, openssl s_client and curl
-- (spec/fixtures/capture.sh), on the RFC 9001 and RFC 9369 sample QUIC
-- Initials and packets made by their procedure (spec/fixtures/make_quic.py),
-- on hostile input, without allocation, and live: a daemon script answering
-- dig's queries for a listed name with NXDOMAIN (the kernel, in namespaces).
local ffi = require "ffi"
local bit = require "bit"
local nfq = require "nfq"
local testing = require "nfq.testing"
local H = require "helpers.net"
local batch = require "helpers.batch"

local C = nfq._C

local function fixture(name)
	local s = H.read_file(H.root .. "/spec/fixtures/" .. name)
	assert(s, "missing fixture " .. name)
	return s
end

local function u16(n) return string.char(math.floor(n / 256), n % 256) end

-- A DNS message: header fields, then raw question/answer bytes.
local function dns_message(id, flags, qd, an, body)
	return u16(id) .. u16(flags) .. u16(qd) .. u16(an) .. u16(0) .. u16(0) .. body
end

-- Every answer of a parsed message: { name, type, rdata length }, or the error.
local function answers(r)
	local list = {}
	while true do
		local ok, why = r:next_answer()
		if ok == nil then return list, why end
		if not ok then return list end
		local _, len = r:rdata()
		list[#list + 1] = { r:answer_name(), r.an_type, len }
	end
end

describe("nfq.dns", function()
	it("reads dig's queries: name with its case, type, class, flags", function()
		local r = assert(nfq.dns(fixture("dns-aaaa.query")))
		assert.same({ "Example.Test", 28, 1, 1, false, 0 }, { r:name(), r.qtype, r.qclass, r.qdcount, r:is_response(),
			r:opcode() })
		assert.equal(2, r.labels)
		local ptr, len = r:name_ptr()
		assert.equal("Example.Test", ffi.string(ptr, len))
		r = assert(nfq.dns(fixture("dns-mx.query")))
		assert.same({ "www.example.test", 15 }, { r:name(), r.qtype })
	end)

	it("follows dnsmasq's compression pointers through a CNAME chain", function()
		local r = assert(nfq.dns(fixture("dns-cname.answer")))
		assert.same({ "cdn.www.example.test", true, 0, 3 }, { r:name(), r:is_response(), r:rcode(), r.ancount })
		assert.same({ { "cdn.www.example.test", 5, 18 }, { "www.example.test", 5, 14 }, { "example.test", 1, 4 } },
			answers(r))
		r = assert(nfq.dns(fixture("dns-a.answer")))
		local list = answers(r)
		assert.same({ { "example.test", 1, 4 } }, list)
		r = assert(nfq.dns(fixture("dns-a.answer")))
		assert.is_true(r:next_answer())
		local rdata = r:rdata()
		assert.same({ 192, 0, 2, 7 }, { rdata[0], rdata[1], rdata[2], rdata[3] })
		assert.is_false(r:next_answer())
	end)

	it("takes a packet or a buffer: the UDP payload, or over TCP after its length", function()
		local query = fixture("dns-a.query")
		local b = nfq.buffer(testing.packet { proto = "udp", dport = 53, payload = query })
		assert.equal("example.test", assert(nfq.dns(b)):name())
		b = nfq.buffer(testing.packet { proto = "tcp", dport = 53, payload = u16(#query) .. query, src = "fd00::1" })
		assert.equal("example.test", assert(nfq.dns(b)):name())
		b = nfq.buffer(testing.packet { proto = "tcp", dport = 53, payload = u16(#query) .. query:sub(1, 20) })
		assert.same({ nil, "incomplete" }, { nfq.dns(b) })
		local results = testing.run(function(pkt)
			local r = nfq.dns(pkt)
			if r and r:name() == "example.test" then pkt:drop() else pkt:accept() end
		end, { testing.packet { payload = query }, testing.packet { payload = fixture("dns-mx.query") } })
		assert.same({ "drop", "accept" }, { results.by_id[1].verdict, results.by_id[2].verdict })
		local mem = ffi.new("uint8_t[?]", #query)
		ffi.copy(mem, query, #query)
		assert.equal("example.test", assert(nfq.dns(mem, #query)):name())
		assert.same({ nil, "malformed: not a UDP or TCP packet" },
			{ nfq.dns(nfq.buffer(testing.packet { proto = "icmp" })) })
		-- A packet with a length is still a packet: its payload is parsed.
		assert.equal("example.test", assert(nfq.dns(nfq.buffer(testing.packet { payload = query }), 3)):name())
	end)

	it("refuses pointer loops, forward pointers, pointers past the end, and cut messages", function()
		local q = "\0\1\0\1"
		local hostile = {
			-- a pointer to itself
			{ dns_message(1, 0, 1, 0, "\192\12" .. q), "malformed: a DNS compression pointer" },
			-- two names pointing at each other: the second must be a forward jump
			{ dns_message(1, 0x8000, 1, 1, "\1a\192\14" .. q .. "\192\12\0\1\0\1\0\0\0\0\0\0"),
				"malformed: a DNS compression pointer" },
			-- past the end
			{ dns_message(1, 0, 1, 0, "\1a\192\255" .. q), "malformed: a DNS compression pointer" },
			-- into the header
			{ dns_message(1, 0, 1, 0, "\1a\192\2" .. q), "malformed: a DNS compression pointer" },
			-- a label cut by the end of the message
			{ dns_message(1, 0, 1, 0, "\7exam"), "incomplete" },
			{ dns_message(1, 0, 1, 0, "\3www\0\0"), "incomplete" },
			{ "\0\1\1", "incomplete" },
			-- the obsolete extended label types
			{ dns_message(1, 0, 1, 0, "\65abc\0" .. q), "malformed: a DNS label" },
			-- a dot inside a label would read as two labels
			{ dns_message(1, 0, 1, 0, "\3a.b\0" .. q), "malformed: a DNS label" },
			-- 5 labels of 63: more than 255 bytes
			{ dns_message(1, 0, 1, 0, ("\63" .. ("x"):rep(63)):rep(5) .. "\0" .. q), "malformed: a name longer" },
		}
		for i, case in ipairs(hostile) do
			local r, why = nfq.dns(case[1])
			assert.is_nil(r, "case " .. i)
			assert.equal(1, why:find(case[2], 1, true), ("case %d: %s"):format(i, why))
		end
		-- Answers are checked as the iterator reaches them.
		local cut = dns_message(1, 0x8180, 1, 2, "\1a\0" .. q .. "\192\12\0\1\0\1\0\0\0\60\0\4\1\2\3\4\192\12\0\1")
		local r = assert(nfq.dns(cut))
		local list, why = answers(r)
		assert.same({ { { "a", 1, 4 } }, "incomplete" }, { list, why })
		local loop = dns_message(1, 0x8180, 1, 1, "\1a\0" .. q .. "\192\21\0\1\0\1\0\0\0\60\0\0")
		list, why = answers(assert(nfq.dns(loop)))
		assert.equal(1, why:find("malformed: a DNS compression pointer", 1, true))
		assert.same({}, list)
	end)

	it("replays its fuzz corpus", function()
		for _, target in ipairs { "dns", "dns_reply", "tls", "quic", "http" } do
			local files = H.sh(("ls %s/spec/fuzz/corpus/%s | wc -l"):format(H.root, target))
			local out = H.sh(("cd %s && build/replay_%s spec/fuzz/corpus/%s/*"):format(H.root, target, target))
			assert.equal(tonumber(files), tonumber(out:match("replayed (%d+) inputs")))
			assert.is_true(tonumber(files) > 0)
		end
	end)
end)

describe("nfq.tls_client_hello", function()
	it("reads openssl s_client's and curl's ClientHellos: SNI, ALPN, versions", function()
		for client, name in pairs { openssl = "blocked.example", curl = "curl.example" } do
			local hello = fixture("tls-" .. client .. ".hello")
			local t = assert(nfq.tls_client_hello(hello))
			assert.same({ name, { "h2", "http/1.1" }, true, false }, { t:sni(), t:alpn(), t:offers("h2"), t:offers("h3") })
			assert.same({ 0x0303, 0x0304, #hello }, { t.legacy_version, t.max_version, t.consumed })
			assert.is_true(t.cipher_suites > 1 and t.extensions > 3)
			assert.equal(0x0304, t:supported_versions()[1])
			local ptr, len = t:sni_ptr()
			assert.equal(name, ffi.string(ptr, len))
		end
	end)

	it("says incomplete for every cut of a ClientHello, and reads one spread over records", function()
		local hello = fixture("tls-openssl.hello")
		for n = 0, #hello - 1 do
			assert.same({ nil, "incomplete" }, { nfq.tls_client_hello(hello:sub(1, n)) })
		end
		-- The same handshake message in three records.
		local msg = hello:sub(6)
		local function record(part) return "\22\3\1" .. u16(#part) .. part end
		local spread = record(msg:sub(1, 2)) .. record(msg:sub(3, 200)) .. record(msg:sub(201))
		local t = assert(nfq.tls_client_hello(spread))
		assert.same({ "blocked.example", #spread }, { t:sni(), t.consumed })
		assert.same({ nil, "incomplete" }, { nfq.tls_client_hello(spread:sub(1, 150)) })
		-- From a TCP segment.
		local b = nfq.buffer(testing.packet { proto = "tcp", dport = 443, payload = hello })
		assert.equal("blocked.example", assert(nfq.tls_client_hello(b)):sni())
	end)

	it("refuses what is not a ClientHello, and extensions that lie", function()
		local hello = fixture("tls-curl.hello")
		local cases = {
			{ "\23\3\3\0\5hello", "malformed: not a TLS handshake" },
			{ "\22\3\3\0\4\2\0\0\0", "malformed: not a TLS handshake" },
			{ "\22\2\0\0\4\1\0\0\0", "malformed: a header field" },
			{ "GET / HTTP/1.1\r\n\r\n", "malformed: not a TLS handshake" },
		}
		-- The server_name list's length made one too long.
		local at = hello:find("\0\0" .. u16(#"curl.example" + 5) .. u16(#"curl.example" + 3), 1, true)
		assert.is_not_nil(at)
		cases[#cases + 1] = { hello:sub(1, at + 3) .. u16(#"curl.example" + 4) .. hello:sub(at + 6),
			"malformed: a length" }
		for i, case in ipairs(cases) do
			local t, why = nfq.tls_client_hello(case[1])
			assert.is_nil(t, "case " .. i)
			assert.equal(1, why:find(case[2], 1, true), ("case %d: %s"):format(i, why))
		end
	end)
end)

describe("nfq.quic_initial", function()
	it("decrypts the RFC 9001 and RFC 9369 sample client Initials: example.com", function()
		for _, name in ipairs { "quic-rfc9001-a2.bin", "quic-rfc9369-a2.bin" } do
			local q = assert(nfq.quic_initial(fixture(name)))
			assert.same({ "example.com", { "alpn" }, 2, 8, 1200 },
				{ q:sni(), q:alpn(), q.packet_number, q.dcid_len, q.packet_len })
			assert.equal(name:find("9369") and C.NFQ_QUIC_V2 or 1, q.version)
			assert.equal(0x0304, q.tls.max_version)
		end
	end)

	it("puts shuffled CRYPTO frames back in order, and says incomplete for a ClientHello in two packets", function()
		local q = assert(nfq.quic_initial(fixture("quic-v1-shuffled.bin")))
		assert.same({ "blocked.example", { "h3", "h3-29" }, 3, 20, 4, 3 },
			{ q:sni(), q:alpn(), q.crypto_frames, q.dcid_len, q.scid_len, q.token_len })
		assert.is_true(q:offers("h3"))
		assert.same({ nil, "incomplete" }, { nfq.quic_initial(fixture("quic-v2-split-1.bin")) })
		assert.same({ nil, "incomplete" }, { nfq.quic_initial(fixture("quic-v2-split-2.bin")) })
		-- From a UDP datagram.
		local b = nfq.buffer(testing.packet { proto = "udp", dport = 443, payload = fixture("quic-rfc9001-a2.bin") })
		assert.equal("example.com", assert(nfq.quic_initial(b)):sni())
	end)

	it("refuses altered, cut, short-header and unknown-version packets", function()
		local a2 = fixture("quic-rfc9001-a2.bin")
		local cases = {
			{ a2:sub(1, 100) .. string.char((a2:byte(101) + 1) % 256) .. a2:sub(102), "malformed: the QUIC payload" },
			{ a2:sub(1, 1000), "incomplete" },
			{ "\64" .. a2:sub(2), "malformed: not a QUIC long-header" },
			{ a2:sub(1, 1) .. "\0\0\0\3" .. a2:sub(6), "malformed: a QUIC version" },
			{ "\224" .. a2:sub(2), "malformed: not a QUIC long-header" }, -- a Handshake packet
		}
		for i, case in ipairs(cases) do
			local q, why = nfq.quic_initial(case[1])
			assert.is_nil(q, "case " .. i)
			assert.equal(1, why:find(case[2], 1, true), ("case %d: %s"):format(i, why))
		end
		assert.equal("example.com", assert(nfq.quic_initial(a2)):sni())
	end)
end)

describe("nfq.http_request", function()
	it("reads method, path and host, with or without a port and the rest of the head", function()
		local r = assert(nfq.http_request("GET /a?b=1 HTTP/1.1\r\nUser-Agent: x\r\nHost:  Example.com:8080 \r\n\r\n"))
		assert.same({ "GET", "/a?b=1", "Example.com", 8080, 1, 1 }, { r:method(), r:path(), r:host(), r.port,
			r.version_minor, r.complete })
		r = assert(nfq.http_request("POST / HTTP/1.0\nhost: [::1]:80\n"))
		assert.same({ "POST", "[::1]", 80, 0, 0 }, { r:method(), r:host(), r.port, r.version_minor, r.complete })
		r = assert(nfq.http_request("GET / HTTP/1.0\r\n\r\n"))
		assert.same({ nil, 1 }, { r:host(), r.complete })
		local ptr, len = r:host_ptr()
		assert.is_not_nil(ptr)
		assert.equal(0, len)
		local b = nfq.buffer(testing.packet { proto = "tcp", payload = "GET / HTTP/1.1\r\nHost: h.example\r\n\r\n" })
		assert.equal("h.example", assert(nfq.http_request(b)):host())
	end)

	it("says incomplete before the host, and refuses what is not a request", function()
		for _, s in ipairs { "", "GE", "GET /x HTTP/1.1", "GET /x HTTP/1.1\r\nAccept: */*\r\nHo" } do
			assert.same({ nil, "incomplete" }, { nfq.http_request(s) })
		end
		local cases = {
			{ "\22\3\1\2\0", "malformed: not an HTTP" },
			{ "GET /x HTTP/2.0\r\n", "malformed: not an HTTP" },
			{ "GET  /x HTTP/1.1\r\n", "malformed: not an HTTP" },
			{ "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "malformed: an HTTP header line" },
			{ "GET /x HTTP/1.1\r\nHost: a b\r\n\r\n", "malformed: an HTTP header line" },
			{ "GET /x HTTP/1.1\r\n Host: a\r\n\r\n", "malformed: an HTTP header line" },
			{ "GET /x HTTP/1.1\r\nHost: a:99999\r\n\r\n", "malformed: an HTTP header line" },
		}
		for i, case in ipairs(cases) do
			local r, why = nfq.http_request(case[1])
			assert.is_nil(r, "case " .. i)
			assert.equal(1, why:find(case[2], 1, true), ("case %d: %s"):format(i, why))
		end
	end)
end)

describe("nfq.dns_reply", function()
	local query = fixture("dns-a.query")

	local function checksums_ok(b)
		local copy = b:copy()
		copy:fix_checksums()
		return copy:bytes() == b:bytes()
	end

	it("answers an IPv4 and an IPv6 query with NXDOMAIN: addresses and ports swapped, same id and question", function()
		for _, src in ipairs { "10.0.0.1", "fd00::1" } do
			local dst = src:find(":") and "fd00::53" or "10.0.0.53"
			local pkt = testing.packet { src = src, dst = dst, sport = 40123, dport = 53, payload = query }
			local b = assert(nfq.dns_reply(pkt))
			assert.is_true(checksums_ok(b))
			local ip = b:ip() or b:ip6()
			assert.same({ dst, src }, { nfq.ntop(ip.src), nfq.ntop(ip.dst) })
			assert.same({ 53, 40123 }, { b:udp().sport, b:udp().dport })
			local id = assert(nfq.dns(query)).id
			local r = assert(nfq.dns(b))
			assert.same({ id, "example.test", 1, true, 3, 0, 1 },
				{ r.id, r:name(), r.qtype, r:is_response(), r:rcode(), r.ancount, r.qdcount })
			assert.equal(0x0100, bit.band(r.flags, 0x0180 - 0x80)) -- RD copied
			assert.equal(0x80, bit.band(r.flags, 0x80)) -- RA
		end
	end)

	it("sinks A and AAAA queries to 0.0.0.0 and ::, and gives other types no data", function()
		local b = assert(nfq.dns_reply(testing.packet { payload = query }, "sinkhole"))
		local r = assert(nfq.dns(b))
		assert.same({ 0, 1 }, { r:rcode(), r.ancount })
		assert.same({ { "example.test", 1, 4 } }, answers(r))
		assert.equal(60, r.an_ttl)
		b = assert(nfq.dns_reply(testing.packet { payload = fixture("dns-aaaa.query") }, { sinkhole = true, ttl = 5 }))
		r = assert(nfq.dns(b))
		assert.same({ { "Example.Test", 28, 16 } }, answers(r))
		assert.equal(5, r.an_ttl)
		assert.is_true(checksums_ok(b))
		r = assert(nfq.dns(assert(nfq.dns_reply(testing.packet { payload = fixture("dns-mx.query") }, "sinkhole"))))
		assert.same({ 0, 0 }, { r:rcode(), r.ancount })
		r = assert(nfq.dns(assert(nfq.dns_reply(testing.packet { payload = query }, "refused"))))
		assert.equal(5, r:rcode())
		r = assert(nfq.dns(assert(nfq.dns_reply(testing.packet { payload = query }, 2))))
		assert.equal(2, r:rcode())
	end)

	it("refuses answers, TCP, cut packets and bad arguments", function()
		assert.same({ nil, "malformed: not a standard DNS query with one question" },
			{ nfq.dns_reply(testing.packet { payload = fixture("dns-a.answer") }) })
		assert.same({ nil, "malformed: not a whole IPv4 or IPv6 UDP datagram" },
			{ nfq.dns_reply(testing.packet { proto = "tcp", payload = query }) })
		local pkt = testing.packet { payload = query }
		assert.same({ nil, "malformed: not a whole IPv4 or IPv6 UDP datagram" }, { nfq.dns_reply(pkt:sub(1, 40)) })
		assert.has_error(function() nfq.dns_reply(pkt, "maybe") end,
			'nfq.dns_reply: unknown answer "maybe"; give nxdomain, refused, servfail, notimp, noerror, sinkhole, '
			.. "an rcode number or a table")
		assert.has_error(function() nfq.dns_reply(pkt, 16) end, "nfq.dns_reply: an rcode is an integer from 0 to 15, got 16")
		assert.has_error(function() nfq.dns_reply(pkt, { sinkhole = true, tll = 3 }) end,
			"nfq.dns_reply: unknown option tll; the options are rcode, sinkhole, ttl")
		assert.has_error(function() nfq.dns(ffi.new("uint8_t[1]"), -1) end,
			"nfq: nfq.dns: the length must be a non-negative integer, got -1")
	end)

	it("answers in a script run by nfq.testing: the answer is sent, the query dropped", function()
		local r = testing.run(function(pkt)
			local q = nfq.dns(pkt)
			if q and q:name() == "example.test" then
				assert(nfq.send(assert(nfq.dns_reply(pkt))))
				pkt:drop()
			else
				pkt:accept()
			end
		end, { testing.packet { payload = query } }, { send = true })
		assert.equal("drop", r.by_id[1].verdict)
		assert.equal(1, #r.sent)
		assert.equal(3, assert(nfq.dns(nfq.buffer(r.sent[1].packet))):rcode())
	end)
end)

describe("name parsers per packet", function()
	local function heap_growth(n, f)
		jit.flush()
		return batch.heap_growth(f, 20000, n)
	end

	local function buffer_of(s)
		local buf = ffi.new("uint8_t[?]", #s)
		ffi.copy(buf, s, #s)
		return buf, #s
	end

	-- The answer loop is left out: a loop inside the per-packet function is
	-- an inner loop the JIT compiles as a trace of its own (see README).
	it("allocate nothing: DNS with its name, TLS, HTTP and QUIC over fixed buffers", function()
		local sink = 0
		local dns, dns_len = buffer_of(fixture("dns-cname.answer"))
		local grown = heap_growth(300000, function()
			local r = nfq.dns(dns, dns_len)
			local ptr, len = r:name_ptr()
			sink = sink + ptr[len - 1] + r.qtype + r.ancount
		end)
		assert.is_true(grown < 16, ("nfq.dns: the Lua heap grew by %.1f KB over 300k messages"):format(grown))
		local tls, tls_len = buffer_of(fixture("tls-curl.hello"))
		grown = heap_growth(300000, function()
			local t = nfq.tls_client_hello(tls, tls_len)
			local ptr, len = t:sni_ptr()
			sink = sink + ptr[0] + len + t.alpn_count
		end)
		assert.is_true(grown < 16, ("nfq.tls_client_hello: the Lua heap grew by %.1f KB over 300k"):format(grown))
		local http, http_len = buffer_of("GET /index.html HTTP/1.1\r\nHost: www.example.com\r\nAccept: */*\r\n\r\n")
		grown = heap_growth(300000, function()
			local h = nfq.http_request(http, http_len)
			local ptr, len = h:host_ptr()
			sink = sink + ptr[0] + len
		end)
		assert.is_true(grown < 16, ("nfq.http_request: the Lua heap grew by %.1f KB over 300k"):format(grown))
		local quic, quic_len = buffer_of(fixture("quic-rfc9001-a2.bin"))
		grown = heap_growth(20000, function()
			local q = nfq.quic_initial(quic, quic_len)
			sink = sink + q.tls.server_name_len
		end)
		assert.is_true(grown < 16, ("nfq.quic_initial: the Lua heap grew by %.1f KB over 20k"):format(grown))
		assert.is_true(sink > 0)
	end)
end)

describe("name parsers on queued packets", function()
	-- Batches of real DNS query packets through the module's own dispatch
	-- (spec/helpers/batch.lua, as spec 05 does); the verdicts go to a queue
	-- number nobody bound.
	it("allocate nothing: nfq.dns on each packet, its name matched and its query dropped", function()
		local queries = { fixture("dns-a.query"), fixture("dns-aaaa.query"), fixture("dns-mx.query") }
		local blocked = ffi.new("char[13]", "example.test")
		local dropped, seen = 0, 0
		local run_batch, keep = batch.synthetic_queue(function(pkt)
			local q = nfq.dns(pkt)
			local ptr, len = q:name_ptr()
			seen = seen + 1
			if len == 12 and ffi.C.memcmp(ptr, blocked, 12) == 0 then
				dropped = dropped + 1
				pkt:drop()
			else
				pkt:accept()
			end
		end, nil, function(i) return testing.packet { payload = queries[i % 3 + 1] } end)
		jit.flush()
		local grown = batch.heap_growth(run_batch, 1000, 300000 / batch.SIZE)
		assert.is_true(grown < 16, ("the Lua heap grew by %.1f KB over 300k packets"):format(grown))
		assert.is_true(dropped > 0 and dropped < seen)
		assert.is_not_nil(keep)
	end)
end)

describe("nfq.dns_reply in the daemon #kernel", function()
	H.isolated_tests()

	it("answers dig's queries for a listed name with NXDOMAIN or ::, and lets the rest reach dnsmasq", function()
		local script = H.tmpfile([[
local nfq = require "nfq"
local answered = 0
return {
	on_packet = function(pkt)
		local q = nfq.dns(pkt)
		local name = q and q:name():lower()
		if name and name:find("blocked%.test$") then
			assert(nfq.send(assert(nfq.dns_reply(pkt, name:find("^sink%.") and "sinkhole" or nil))))
			answered = answered + 1
			pkt:drop()
		else
			pkt:accept()
		end
	end,
	on_stop = function() io.stderr:write("answered " .. answered .. "\n") end,
}
]], ".lua")
		for _, ipt in ipairs { "iptables", "ip6tables" } do
			H.sh(ipt .. " -A OUTPUT -m mark --mark 0x1/0x1 -j RETURN")
			H.sh(ipt .. " -A OUTPUT -o lo -p udp --dport 5353 -j NFQUEUE --queue-num 1")
		end
		local pidfile = H.tmpfile()
		H.sh(("dnsmasq --port=5353 --listen-address=127.0.0.1,::1 --bind-interfaces --no-resolv --no-hosts "
			.. "--host-record=allowed.test,192.0.2.9 --pid-file=%s --log-facility=/dev/null"):format(pidfile))
		finally(function() os.execute("kill $(cat " .. pidfile .. ") 2>/dev/null") end)
		local d = H.daemon(script .. " --queue 1 --send --send-mark 0x1/0x1")
		H.wait_queue_ready(1)
		local function dig(args)
			return H.sh("dig +tries=1 +time=5 -p 5353 " .. args .. " 2>&1 || true")
		end
		assert.matches("status: NXDOMAIN", dig("@127.0.0.1 www.blocked.test A"))
		assert.matches("status: NXDOMAIN", dig("@::1 Blocked.Test AAAA"))
		local sunk = dig("@::1 sink.blocked.test AAAA")
		assert.matches("status: NOERROR", sunk)
		assert.matches("sink%.blocked%.test%.%s+60%s+IN%s+AAAA%s+::", sunk)
		local allowed = dig("@127.0.0.1 allowed.test A")
		assert.matches("status: NOERROR", allowed)
		assert.matches("allowed%.test%.%s+%d+%s+IN%s+A%s+192%.0%.2%.9", allowed)
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.matches("answered 3", d:output(), 1, true)
		assert.matches("sent=3 send_errors=0", d:output(), 1, true)
	end)
end)

-- scripts/examples/blocklist.lua (a DNS sinkhole and SNI filter) in the
-- daemon, against real clients and servers in the spec's network namespace:
-- dig and dnsmasq (UDP and TCP), openssl s_client and s_server with a
-- certificate made here, a client that splits a real ClientHello
-- (spec/fixtures/tls-openssl.hello) into three segments, curl and an HTTP
-- server, QUIC Initials from spec/fixtures (made by make_quic.py), a SIGHUP
-- that loads a new list and one whose list is gone. Refused TCP connections
-- are reset on the server's side too (pkt:reject("tcp-reset-both")): none is
-- left established there, and one s_server serves every connection. Its
-- default list, scripts/examples/blocklist.txt, is the one --check loads.
local H = require "helpers.net"

local SCRIPT = H.root .. "/scripts/examples/blocklist.lua"

local function fixture(name) return H.root .. "/spec/fixtures/" .. name end

-- The rules of README, A blocklist, as written.
local function rules()
	local readme = assert(H.read_file(H.root .. "/README.md"))
	local text = assert(readme:match("<!%-%- check: blocklist %-%->\n```sh\n(.-)```"), "no README block blocklist")
	H.sh("set -e\n" .. text)
	H.sh("set -e\n" .. text:gsub("iptables", "ip6tables"))
end

local function start(list)
	rules()
	local d = H.daemon(SCRIPT .. " --queue 1 --send --send-mark 0x1/0x1",
		"NFQ_BLOCKLIST=" .. list .. " NFQ_BLOCKLIST_REPORT=1")
	H.wait_queue_ready(1)
	return d
end

-- dnsmasq on 127.0.0.1:53 that answers by itself: every name below would
-- resolve if the script let its query through.
local function dnsmasq()
	local pidfile = H.tmpfile()
	H.sh(("dnsmasq --port=53 --listen-address=127.0.0.1,::1 --bind-interfaces --no-resolv --no-hosts "
		.. "--address=/ads.example/192.0.2.66 --address=/new.example/192.0.2.77 "
		.. "--host-record=ok.test,192.0.2.9 --pid-file=%s --log-facility=/dev/null"):format(pidfile))
	finally(function() os.execute("kill $(cat " .. pidfile .. ") 2>/dev/null") end)
end

local function dig(args, server)
	return H.sh(("dig @%s +tries=1 +time=5 %s 2>&1 || true"):format(server or "127.0.0.1", args))
end

-- The counters line the script writes at stop.
local function stop_counts(d)
	d:signal("TERM")
	assert.equal(0, d:wait())
	local line = d:output():match("blocklist: at stop: ([^\n]+)")
	assert.truthy(line, d:output())
	local counts = {}
	for k, v in line:gmatch("([%w_]+)=(%d+)") do counts[k] = tonumber(v) end
	return counts, d:output()
end

-- The server's side of the refused connections to port: reset too, so
-- none is left established.
local function server_side_reset(port)
	H.wait_for(function()
		return not H.sh(("ss -Htn state established '( sport = :%d )'"):format(port)):find("%S")
	end, 5, "the server's side of the refused connection to be reset")
end

-- Run a command in the background; kill it when the test ends.
local function background(cmd)
	local pidfile = H.tmpfile()
	H.sh(("( %s ) > %s.log 2>&1 & echo $! > %s"):format(cmd, pidfile, pidfile))
	finally(function() os.execute("kill $(cat " .. pidfile .. ") 2>/dev/null") end)
end

describe("blocklist.lua #kernel", function()
	H.isolated_tests()

	it("answers DNS queries for listed names and their subdomains NXDOMAIN, resets them over TCP", function()
		-- IPv4 and IPv6: the README's rules, and the same with ip6tables.
		dnsmasq()
		local d = start(H.tmpfile("# ads\nads.example\n0.0.0.0 tracker.example\n"))
		assert.matches("status: NXDOMAIN", dig("ads.example A"))
		assert.matches("status: NXDOMAIN", dig("www.Ads.Example AAAA", "::1"))
		local ok = dig("ok.test A")
		assert.matches("status: NOERROR", ok)
		assert.matches("ok%.test%.%s+%d+%s+IN%s+A%s+192%.0%.2%.9", ok)
		-- Over TCP the script cannot answer: the connection is reset.
		local tcp = dig("+tcp ads.example A")
		assert.not_matches("status:", tcp)
		assert.matches("reset", tcp)
		assert.matches("192%.0%.2%.9", dig("+tcp ok.test A"))
		assert.matches("reset", dig("+tcp tracker.example A", "::1"))
		server_side_reset(53)
		d:wait_output("dns_blocked=2", 10)
		local counts = stop_counts(d)
		assert.equal(2, counts.dns_blocked)
		assert.equal(2, counts.dns_tcp_blocked)
		assert.equal(1, counts.dns_passed)
		assert.equal(2, counts.names)
	end)

	it("resets TLS connections to listed names, also with a ClientHello in three segments", function()
		local dir = H.tmpfile() .. ".d"
		H.sh(("mkdir %s && cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
			.. "-keyout key.pem -out cert.pem -days 1 -subj /CN=blocklist.test 2>&1"):format(dir, dir))
		-- One s_server for every connection: it serves one at a time, so it
		-- serves the last only if the refused ones were reset on its side too.
		background(("exec openssl s_server -accept 127.0.0.1:443 -cert %s/cert.pem -key %s/key.pem -quiet "
			.. "< /dev/null"):format(dir, dir))
		H.wait_for(function() return H.sh("ss -ltn"):find("127.0.0.1:443 ", 1, true) end, 10, "s_server to listen")
		local d = start(H.tmpfile("ads.example\nblocked.example\n"))
		local function s_client(name)
			return H.sh(("timeout 10 openssl s_client -connect 127.0.0.1:443 -servername %s < /dev/null 2>&1 || true")
				:format(name))
		end
		assert.matches("Cipher is TLS_", s_client("ok.test"))
		-- The SNI of the openssl fixture is blocked.example; curl's is curl.example.
		local client = H.tmpfile([[
import socket, sys, time
data = open(sys.argv[1], "rb").read()
s = socket.create_connection(("127.0.0.1", 443))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(5)
cuts = [0, 40, len(data) // 2, len(data)]
try:
    for a, b in zip(cuts, cuts[1:]):
        s.send(data[a:b])
        time.sleep(0.2)
    print("got %d bytes" % len(s.recv(65536)))
except ConnectionResetError:
    print("reset")
except socket.timeout:
    print("timeout")
]], ".py")
		local function split(hello)
			return H.sh(("/usr/bin/python3 %s %s"):format(client, hello))
		end
		assert.matches("^got [1-9]%d* bytes", split(fixture("tls-curl.hello")))
		local refused = s_client("www.ads.example")
		assert.matches("errno=104", refused) -- ECONNRESET
		assert.matches("SSL handshake has read 0 bytes", refused)
		server_side_reset(443)
		assert.matches("^reset", split(fixture("tls-openssl.hello")))
		server_side_reset(443)
		assert.matches("Cipher is TLS_", s_client("ok.test"), "the same s_server serves the next connection")
		-- The rest of the connections that passed skipped the queue.
		assert.is_true(H.rule_packets("filter", "OUTPUT", "ACCEPT.-mark match 0x40000000") > 0)
		local counts = stop_counts(d)
		assert.equal(2, counts.tls_blocked)
		assert.equal(3, counts.tls_passed)
		assert.equal(0, counts.unread)
	end)

	it("resets HTTP requests whose Host is listed", function()
		local root = H.tmpfile() .. ".www"
		H.sh("mkdir " .. root .. " && echo hello > " .. root .. "/index.html")
		background("cd " .. root .. " && exec /usr/bin/python3 -m http.server 80 --bind 127.0.0.1")
		H.wait_for(function() return H.sh("ss -ltn"):find("127.0.0.1:80 ") end, 10, "the HTTP server to listen")
		local d = start(H.tmpfile("ads.example\n"))
		local function curl(name)
			return H.sh(("curl -sS -m 10 --resolve %s:80:127.0.0.1 http://%s/ 2>&1 || true"):format(name, name))
		end
		assert.matches("^hello", curl("ok.test"))
		assert.matches("reset", curl("img.ads.example"))
		server_side_reset(80)
		local counts = stop_counts(d)
		assert.equal(1, counts.http_blocked)
		assert.equal(1, counts.http_passed)
	end)

	it("drops QUIC Initials to listed names and those it cannot read whole, passes the rest", function()
		local rx = H.udp("127.0.0.1", 443)
		local d = start(H.tmpfile("blocked.example\n"))
		local sent = {}
		for _, name in ipairs { "quic-rfc9001-a2.bin", "quic-v1-shuffled.bin", "quic-rfc9369-a2.bin",
			"quic-v2-split-1.bin" } do
			local packet = assert(H.read_file(fixture(name)))
			sent[name] = packet
			-- A socket each: a flow each.
			H.udp():sendto(packet, "127.0.0.1", 443)
		end
		local got = { rx:recv(10), rx:recv(10) }
		assert.equal(2, #got)
		local passed = { [got[1]] = true, [got[2]] = true }
		assert.is_true(passed[sent["quic-rfc9001-a2.bin"]] and passed[sent["quic-rfc9369-a2.bin"]])
		-- Every packet decided (the report every second says so), none more through.
		d:wait_output("quic_unread=1", 10)
		assert.is_nil(rx:recv(0.2))
		local counts = stop_counts(d)
		assert.equal(1, counts.quic_blocked)
		assert.equal(1, counts.quic_unread)
		assert.equal(2, counts.quic_passed)
	end)

	it("loads a new list on SIGHUP, and keeps the old one when the list is gone", function()
		dnsmasq()
		local list = H.tmpfile("ads.example\n")
		local d = start(list)
		assert.matches("192%.0%.2%.77", dig("new.example A"))
		local f = assert(io.open(list, "w"))
		f:write("ads.example\nnew.example\nthird.example\n")
		f:close()
		d:signal("HUP")
		d:wait_output("version 2 runs now", 20)
		assert.matches("blocklist: 3 names from " .. list, d:output(), 1, true)
		assert.matches("status: NXDOMAIN", dig("www.new.example A"))
		os.remove(list)
		d:signal("HUP")
		d:wait_output("version 2 keeps running", 20)
		assert.matches("cannot read " .. list, d:output(), 1, true)
		assert.matches("status: NXDOMAIN", dig("new.example A"))
		local counts, out = stop_counts(d)
		-- The counters went on across the reload.
		assert.equal(2, counts.dns_blocked)
		assert.equal(1, counts.dns_passed)
		assert.equal(3, counts.names)
		assert.matches("reloads=1 reload_failures=1", out, 1, true)
	end)
end)

describe("blocklist.lua per packet", function()
	-- Its callback on batches of real packets through the module's own
	-- dispatch (spec/helpers/batch.lua, as spec 05 does), with its default
	-- list: DNS queries for names not listed, and the packets of HTTP
	-- connections that passed (bypassed).
	it("allocates nothing on the common path: queries that pass, packets of decided connections", function()
		local batch = require "helpers.batch"
		local testing = require "nfq.testing"
		local script = dofile(SCRIPT)
		local request = "GET / HTTP/1.1\r\nHost: ok.test\r\n\r\n"
		local run_batch, keep = batch.synthetic_queue(script.on_packet, nil, function(i)
			if i % 2 == 0 then return testing.packet { payload = H.dns_query(("n%d.example.org"):format(i)) } end
			return testing.packet { proto = "tcp", sport = 40000 + i % 8, dport = 80, payload = request }
		end)
		jit.flush()
		local grown = batch.heap_growth(run_batch, 1000, 300000 / batch.SIZE)
		assert.is_true(grown < 16, ("the Lua heap grew by %.1f KB over 300k packets"):format(grown))
		assert.is_not_nil(keep)
	end)
end)

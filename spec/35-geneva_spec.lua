-- nfq.geneva against Geneva's own engine: every strategy of Geneva's
-- strategies.md and a few more run on the fixtures' packets (made by
-- spec/fixtures/geneva/make_fixtures.py with Geneva's act_on_packet) through
-- nfq.testing, and the packets compared byte for byte and in order (the
-- corrupt ones structurally); the parser, its errors and a fuzz loop; the
-- per-packet path's allocation.
local bit = require "bit"
local nfq = require "nfq"
local testing = require "nfq.testing"
local geneva = require "nfq.geneva"
local batch = require "helpers.batch"
local H = require "helpers.net"

local band, rshift = bit.band, bit.rshift
local fixtures = dofile(H.root .. "/spec/fixtures/geneva/cases.lua")

local function unhex(h) return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end)) end
local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end

local inputs = {}
for _, i in ipairs(fixtures.inputs) do inputs[i.name] = unhex(i.hex) end
-- After each input an IPv6 packet, which no strategy touches: the run goes
-- on past the sleeps until then.
local after = testing.packet { src = "fd00::9", dst = "fd00::8", dport = 9 }

local function run(s, input, direction)
	geneva.seed(7)
	local results = testing.run({
		on_packet = function(pkt) s:apply(pkt, direction) end,
		on_timer = function() s:tick() end,
		timer_interval = 0.01,
	}, { { bytes = input, time = 1 }, { bytes = after, time = 3 } },
		{ send = true, hook = direction == "in" and "input" or "output" })
	local sent, verdict = {}, results.by_id[1]
	for _, r in ipairs(results.sent) do sent[#sent + 1] = r.packet end
	-- Geneva parses IPv4 only: the IPv6 packet passes as it is
	assert.equal("accept", results.by_id[2].verdict)
	assert.is_nil(results.by_id[2].payload)
	return sent, verdict
end

local function u16(s, o) return s:byte(o + 1) * 256 + s:byte(o + 2) end

local function sum16(s, from, to, acc)
	for i = from, to - 1, 2 do
		acc = acc + s:byte(i + 1) * 256 + (i + 1 < to and s:byte(i + 2) or 0)
	end
	while acc > 0xffff do acc = band(acc, 0xffff) + rshift(acc, 16) end
	return acc
end

local function ip_sum_ok(p) return sum16(p, 0, band(p:byte(1), 15) * 4, 0) == 0xffff end
local function tcp_sum_ok(p)
	local ihl = band(p:byte(1), 15) * 4
	if p:byte(10) ~= 6 then return nil end
	local seed = u16(p, 12) + u16(p, 14) + u16(p, 16) + u16(p, 18) + 6 + #p - ihl
	return sum16(p, ihl, #p, seed) == 0xffff
end

-- Where the fields that corrupt draws are, by layer: byte offset and length.
local field_bytes = {
	IP = { ttl = { 8, 1 }, len = { 2, 2 }, chksum = { 10, 2 }, id = { 4, 2 } },
	TCP = { chksum = { 16, 2 }, ack = { 8, 4 }, seq = { 4, 4 }, window = { 14, 2 }, flags = { 12, 2 } },
	UDP = { chksum = { 6, 2 } },
	DNS = { qdcount = { 4, 2 } },
}

-- nfqlua's packet against Geneva's for a strategy that corrupts fields:
-- the same bytes but in the corrupted fields (and the checksums and lengths
-- they change), checksums valid where Geneva's are.
local function same_structure(mine, theirs, corrupted, input)
	assert.equal(theirs:byte(1), mine:byte(1))
	local ihl = band(mine:byte(1), 15) * 4
	local proto = mine:byte(10)
	local masked = { [2] = true, [3] = true, [10] = true, [11] = true }
	local l4_csum = proto == 6 and 16 or 6
	masked[ihl + l4_csum], masked[ihl + l4_csum + 1] = true, true
	local header_end = ihl + (proto == 6 and band(rshift(theirs:byte(ihl + 13), 4), 15) * 4 or 8)
	local compare_to, same_length = #theirs, true
	for _, c in ipairs(corrupted) do
		local proto_name, field = c[1], c[2]
		local base = proto_name == "IP" and 0 or proto_name == "DNS" and ihl + 8 or ihl
		if field == "load" then
			compare_to, same_length = header_end, false
			local payload = mine:sub(header_end + 1)
			assert.is_true(payload == theirs:sub(header_end + 1) or payload == ""
				or #payload == 10 and payload:match("^[a-z0-9]+$") ~= nil
				or payload:find("^GET / HTTP/1.1") ~= nil or payload:find("faceface") ~= nil, "a load Geneva draws")
		elseif field:find("^options%-") then
			compare_to, same_length = ihl + 12, false
			assert.equal(mine:byte(ihl + 13), theirs:byte(ihl + 13))
			assert.equal(#theirs, #mine)
			local payload = #input - ihl - band(rshift(input:byte(ihl + 13), 4), 15) * 4
			assert.equal(theirs:sub(#theirs - payload + 1), mine:sub(#mine - payload + 1))
		else
			local f = field_bytes[proto_name][field]
			for k = 0, f[2] - 1 do masked[base + f[1] + k] = true end
		end
	end
	if same_length then assert.equal(#theirs, #mine) end
	for i = 0, compare_to - 1 do
		if not masked[i] and mine:byte(i + 1) ~= theirs:byte(i + 1) then
			error(("byte %d differs: %02x, Geneva's %02x"):format(i, mine:byte(i + 1), theirs:byte(i + 1)))
		end
	end
	assert.equal(ip_sum_ok(theirs), ip_sum_ok(mine), "IP checksum validity")
	local tcp_corrupted = false
	for _, c in ipairs(corrupted) do tcp_corrupted = tcp_corrupted or c[1] == "TCP" and c[2] == "chksum" end
	if not tcp_corrupted and proto == 6 then
		assert.equal(tcp_sum_ok(theirs), tcp_sum_ok(mine), "TCP checksum validity")
	end
end

-- The IPv4 total length a tamper set, and the header checksum with it, are
-- the kernel's on a raw socket (raw(7)): nfqlua sends the real ones.
local function same_but_length(mine, theirs)
	assert.equal(#theirs, #mine)
	assert.equal(#mine, u16(mine, 2))
	assert.is_true(ip_sum_ok(mine))
	local function but_length(p) return p:sub(1, 2) .. p:sub(5, 10) .. p:sub(13) end
	assert.equal(but_length(theirs), but_length(mine))
end

local function corrupted_fields(dna)
	local list = {}
	for p, f in dna:gmatch("tamper{(%u+):([%w%-]+):corrupt}") do list[#list + 1] = { p, f } end
	return list
end

describe("nfq.geneva against Geneva's engine", function()
	local compared, library_strategies = 0, {}
	for _, case in ipairs(fixtures.cases) do
		if case.library then library_strategies[case.dna] = true end
		local title = ("%s on %s (%s)"):format(case.dna, case.input, case.direction)
		it(title, function()
			local s = assert(geneva.parse(case.dna))
			-- Geneva's str() drops a trigger's wildcard: nfqlua keeps it
			assert.equal(case.canonical, (tostring(s):gsub("%*%]", "]")))
			local sent, verdict = run(s, inputs[case.input], case.direction)
			compared = compared + 1
			if case.crash then
				-- Geneva crashes; nfqlua handles the packet (checked below)
				assert.is_not_nil(verdict)
				return
			end
			if case.untouched then
				assert.equal("accept", verdict.verdict)
				assert.is_nil(verdict.payload)
				assert.same({}, sent)
				return
			end
			local corrupted = corrupted_fields(case.dna)
			if case.direction == "in" then
				local want = case.outputs[1]
				if not want then
					assert.equal("drop", verdict.verdict)
				else
					assert.equal("accept", verdict.verdict)
					assert.equal(want.hex, hex(verdict.payload or verdict.packet))
				end
				return
			end
			assert.equal("drop", verdict.verdict)
			-- sleeping packets leave after the others, in their order
			local want = {}
			for _, o in ipairs(case.outputs) do if o.sleep == 0 then want[#want + 1] = o.hex end end
			for _, o in ipairs(case.outputs) do if o.sleep > 0 then want[#want + 1] = o.hex end end
			assert.equal(#want, #sent)
			for i, w in ipairs(want) do
				local theirs = unhex(w)
				if #corrupted > 0 then
					same_structure(sent[i], theirs, corrupted, inputs[case.input])
				elseif u16(theirs, 2) ~= #theirs then
					same_but_length(sent[i], theirs)
				else
					assert.equal(w, hex(sent[i]))
				end
			end
		end)
	end

	it("covers every strategy of strategies.md", function()
		local n = 0
		for _ in pairs(library_strategies) do n = n + 1 end
		assert.equal(23, n)
		assert.equal(#fixtures.cases, compared)
	end)

	it("handles IPv4 with options, where Geneva crashes, as without", function()
		for _, case in ipairs(fixtures.cases) do
			if case.input == "http_ipopts" and case.direction == "out" then
				local plain
				for _, other in ipairs(fixtures.cases) do
					if other.dna == case.dna and other.input == "http" then plain = other end
				end
				local s = assert(geneva.parse(case.dna))
				local sent, verdict = run(s, inputs.http_ipopts, "out")
				if plain.untouched then
					assert.equal("accept", verdict.verdict)
				elseif plain.outputs then
					assert.equal(#plain.outputs, #sent, case.dna)
					for _, p in ipairs(sent) do
						assert.equal(6, band(p:byte(1), 15))
						assert.equal("\148\4\0\0", p:sub(21, 24))
					end
				end
			end
		end
	end)

	it("reads DNSQR as scapy 2.4 did, where Geneva crashes on scapy 2.5", function()
		local s = assert(geneva.parse("[DNSQR:qname:www.example.com.]-tamper{DNSQR:qtype:replace:28}-|"))
		local sent = run(s, inputs.dns, "out")
		assert.equal(1, #sent)
		local q = inputs.dns
		local at = #q - 4 -- qtype, then qclass, end the question
		assert.equal(q:sub(1, at) .. "\0\28" .. q:sub(at + 3), sent[1])
		s = assert(geneva.parse("[DNSQR:qtype:1]-tamper{DNS:qdcount:corrupt}-|"))
		sent = run(s, inputs.dns, "out")
		assert.equal(1, #sent)
		assert.equal(q:sub(1, 32), sent[1]:sub(1, 32))
		assert.equal(q:sub(35), sent[1]:sub(35))
	end)
end)

describe("nfq.geneva.parse", function()
	it("gives every strategy of strategies.md back in Geneva's form, and parses that again", function()
		for _, case in ipairs(fixtures.cases) do
			local s = assert(geneva.parse(case.dna))
			local again = assert(geneva.parse(tostring(s)))
			assert.equal(tostring(s), tostring(again))
		end
	end)

	it("accepts the forms Geneva accepts", function()
		assert.equal([[[TCP:flags:S]-drop-| \/ ]], tostring(assert(geneva.parse('"[TCP:flags:S]-drop"'))))
		assert.equal([[[TCP:flags:S]-drop-| \/ ]], tostring(assert(geneva.parse("[TCP:flags:S]-drop|"))))
		assert.equal([[[TCP:flags:S]-duplicate-| \/ ]], tostring(assert(geneva.parse("[TCP:flags:S]-duplicate(,)-|"))))
		assert.equal([[[IP:ttl:64]-tamper{IP:ttl:replace:10}-| \/ ]],
			tostring(assert(geneva.parse("[IP:ttl:064]-tamper{IP:ttl:replace:+10}-|"))))
		assert.equal([[[TCP:flags:PA]-sleep{1.5}-| [UDP:dport:53]-drop-| \/ [TCP:flags:SA]-drop-|]],
			tostring(assert(geneva.parse("[TCP:flags:PA]-sleep{1.50}-|\n  [UDP:dport:53]-drop-| \\/ [TCP:flags:SA]-drop-|"))))
		assert.equal(" \\/ ", tostring(assert(geneva.parse(""))))
	end)

	local errors = {
		{ "[TCP:flags:PA]-dupe-|",
			"position 16: expected an action (duplicate, tamper, fragment, drop or sleep), got \"dupe\"" },
		{ "[TCP:flagz:PA]-drop-|", "position 6: TCP has no field \"flagz\"" },
		{ "[TCPX:flags:PA]-drop-|", "position 2: expected a protocol (IP, TCP, UDP, DNS or DNSQR), got \"TCPX\"" },
		{ "[TCP:flags:PX]-drop-|", "position 12: TCP flags are letters of FSRPAUECN, got \"PX\"" },
		{ "[TCP:flags:PA]drop-|", "position 15: expected '-' after the trigger, got \"d\"" },
		{ "[TCP:flags:PA-drop-|", "position 20: expected ']' to close the trigger" },
		{ "[TCP:flags:PA]-tamper{TCP:ttl:replace:1}-|", "position 27: TCP has no field \"ttl\"" },
		{ "[TCP:flags:PA]-tamper{TCP:seq:zap:1}-|", "position 31: expected replace, corrupt or add, got \"zap\"" },
		{ "[TCP:flags:PA]-tamper{IP:ttl:replace:300}-|", "position 38: IP:ttl is 8 bits: 0 to 255, got 300" },
		{ "[TCP:flags:PA]-tamper{IP:ttl:replace:1}(drop,drop)-|",
			"position 46: tamper has one child, on the left: (child,)" },
		{ "[TCP:flags:PA]-duplicate(drop)-|",
			"position 25: children go in (left,right), with the comma even when one is empty" },
		{ "[TCP:flags:PA]-drop(duplicate,)-|", "position 20: drop has no children" },
		{ "[TCP:flags:PA]-fragment{udp:8:True}-|", "position 25: expected tcp or ip, got \"udp\"" },
		{ "\\/ [TCP:flags:SA]-duplicate-|",
			"position 19: duplicate is for outbound trees; an inbound tree takes tamper and drop" },
		{ "[TCP:flags:PA]-duplicate(,)-| \\/ [TCP:flags:SA]-drop-| \\/",
			"position 56: a strategy has one \\/ between its outbound and inbound trees" },
	}
	for _, e in ipairs(errors) do
		it("says where and what it expected: " .. e[1], function()
			local s, err = geneva.parse(e[1])
			assert.is_nil(s)
			assert.equal(e[2], err)
		end)
	end

	it("never raises on random strings: a strategy or nil and a message", function()
		local pieces = { "[", "]", "-", "|", "(", ")", ",", "{", "}", ":", "\\/", " ", "TCP", "IP", "UDP", "DNS",
			"DNSQR", "flags", "PA", "S", "dport", "ttl", "load", "qname", "options-mss", "options-md5header", "10",
			"-1", "*", "duplicate", "tamper", "fragment", "drop", "sleep", "replace", "corrupt", "add", "tcp", "ip",
			"True", "False", "0.5", "%41", "\"", "x", "\0", "\255" }
		math.randomseed(35)
		local parsed = 0
		for _ = 1, 20000 do
			local t = {}
			for k = 1, math.random(1, 30) do t[k] = pieces[math.random(#pieces)] end
			local dna = table.concat(t)
			local ok, s, err = pcall(geneva.parse, dna)
			assert(ok, ("parse raised on %q: %s"):format(dna, tostring(s)))
			if s then
				parsed = parsed + 1
				assert.equal(tostring(s), tostring(assert(geneva.parse(tostring(s)))))
			else
				assert.equal("string", type(err))
				assert.is_truthy(err:find("^position %d+: "), err)
			end
		end
		assert.is_true(parsed > 0)
	end)

	it("is documented in the README", function()
		local readme = assert(H.read_file(H.root .. "/README.md"))
		for _, name in ipairs { "geneva.parse(", "geneva.seed(", "strategy:apply(", "strategy:tick()", "strategy.stats",
			"tostring(strategy)", "opts.send(ptr, len)" } do
			assert.truthy(readme:find(name, 1, true), name)
		end
		for name in pairs(assert(geneva.parse("[TCP:flags:S]-drop-|")).stats) do
			assert.truthy(readme:find("`" .. name .. "`", 1, true), "stats." .. name)
		end
	end)

	it("raises on misuse", function()
		assert.has_error(function() geneva.parse(42) end, "nfq.geneva.parse: the strategy must be a string, got number 42")
		assert.has_error(function() geneva.seed("x") end, "nfq.geneva.seed: the seed must be an integer, got string \"x\"")
	end)
end)

describe("nfq.geneva on hostile packets", function()
	local fuzz = dofile(H.root .. "/spec/fuzz/fuzz_geneva.lua")

	it("survives a seeded fuzz run: every fixture strategy and random ones on mutated packets", function()
		local report = fuzz.run { seed = 35, iterations = 300, root = H.root }
		local f = report.failures[1]
		assert(not f, f and ("%s (%s) on %d bytes %s...: %s"):format(f.dna, f.direction, #f.input,
			fuzz.hex(f.input:sub(1, 80)), f.why))
		assert.is_true(report.strategies > 500 and report.packets > 12000)
	end)

	it("the fuzz harness sees a write past a slot's 65535 bytes and past a buffer", function()
		local s, guards = fuzz.parse("[TCP:flags:PA]-duplicate(,)-|")
		assert.is_nil(fuzz.broken_guard(guards))
		local store = s.store
		store[65535] = 0
		assert.equal("a write past byte 65535 of slot 0 of the strategy's store", fuzz.broken_guard(guards))
		store[65535] = 0xa5
		local size = 2 * (65536 + 1024) -- two slots: the packet and its duplicate
		store[size] = 0
		assert.truthy(fuzz.broken_guard(guards):find("a write past the end of uint8_t[?] (" .. size, 1, true))
	end)

	it("cuts a load or an option that grows a packet past 65535 bytes there, writing nothing past the slot", function()
		local big = testing.packet { proto = "tcp", tcp_flags = 0x18, payload = ("x"):rep(65531 - 40) }
		for _, dna in ipairs { "[TCP:flags:PA]-tamper{TCP:load:replace:" .. ("y"):rep(66000) .. "}-|",
			"[TCP:flags:PA]-tamper{TCP:options-timestamp:replace:1}(tamper{TCP:options-mss:replace:1},)-|" } do
			local sent = {}
			local s, guards = fuzz.parse(dna, { send = function(ptr, len)
				sent[#sent + 1] = require("ffi").string(ptr, len)
				return true
			end })
			testing.run({ on_packet = function(pkt) s:apply(pkt, "out") end }, { big })
			assert.is_nil(fuzz.broken_guard(guards))
			assert.equal(1, #sent)
			assert.equal(65535, #sent[1])
			assert.equal(65535, u16(sent[1], 2))
			assert.is_true(ip_sum_ok(sent[1]) and tcp_sum_ok(sent[1]))
		end
	end)

	-- Found by the fuzz run: memmove over the slots with a negative length.
	it("refuses a fragment offset below -1, on which Geneva's engine crashes or moves sequence numbers back", function()
		local s, err = geneva.parse("[TCP:flags:PA]-fragment{ip:-2:True}-|")
		assert.is_nil(s)
		assert.equal("position 28: the fragment offset is -1 (half) or at least 0, got -2", err)
		assert.is_nil(geneva.parse("[TCP:flags:PA]-fragment{tcp:-100000:True}-|"))
		assert.truthy(geneva.parse("[TCP:flags:PA]-fragment{tcp:-1:True}-|"))
	end)

	-- Found by the fuzz run: set_payload raised past 65531 bytes.
	it("cuts an inbound packet an option grew past what a verdict carries, lengths and checksums right", function()
		local big = testing.packet { proto = "tcp", tcp_flags = 0x18, payload = ("x"):rep(65531 - 40) }
		assert.equal(65531, #big)
		local s = assert(geneva.parse([[ \/ [TCP:flags:PA]-tamper{TCP:options-mss:replace:1460}-|]]))
		local results = testing.run({ on_packet = function(pkt) assert.equal("accept", s:apply(pkt)) end },
			{ big }, { hook = "input" })
		local p = results.by_id[1].payload
		assert.equal(65531, #p)
		assert.equal(65531, u16(p, 2))
		assert.equal("\2\4\5\180", p:sub(41, 44))
		assert.is_true(ip_sum_ok(p))
		assert.is_true(tcp_sum_ok(p))
	end)

	-- Found reading the code the fuzzer drove: a TCP option whose length
	-- runs past the header was read past the packet's end.
	it("reads no option value past the packet's end", function()
		local ffi = require "ffi"
		-- a SYN whose header (24 bytes) ends in an MSS option's kind and length, its value missing
		local syn = testing.packet { proto = "tcp", tcp_flags = 0x02 }
		syn = syn:sub(1, 2) .. "\0\44" .. syn:sub(5, 32) .. "\96" .. syn:sub(34) .. "\1\1\2\4"
		assert.equal(44, #syn)
		local buf = ffi.new("uint8_t[64]")
		ffi.copy(buf, syn, #syn) -- the two bytes after it are zero: an MSS of 0 if read
		local verdict
		local pkt = {
			view = function() return buf, #syn end,
			accept = function() verdict = "accept" end,
			drop = function() verdict = "drop" end,
		}
		local s = assert(geneva.parse("[TCP:options-mss:0]-drop-|"))
		assert.equal("accept", s:apply(pkt, "out"))
		assert.equal("accept", verdict)
	end)
end)

describe("nfq.geneva's per-packet path", function()
	local segment = testing.packet { proto = "tcp", tcp_flags = 0x18, payload = ("GET / HTTP/1.1\r\n"):rep(4) }
	local ack = testing.packet { proto = "tcp", tcp_flags = 0x10 }
	-- The issue's first two strategies, and the library's first.
	local measured = {
		"[TCP:flags:PA]-duplicate(tamper{TCP:dataofs:replace:10}(tamper{IP:ttl:replace:10},),)-|",
		"[TCP:flags:PA]-fragment{tcp:8:True}(,fragment{tcp:4:True})-|",
		"[TCP:flags:PA]-duplicate(tamper{TCP:dataofs:replace:10}(tamper{TCP:chksum:corrupt},),)-|",
	}
	local function grown_over_a_million(dna, packet_of)
		jit.flush()
		local sent = 0
		local s = assert(geneva.parse(dna, { send = function() sent = sent + 1 return true end }))
		local run_batch, keep = batch.synthetic_queue(function(pkt) s:apply(pkt, "out") end, nil,
			packet_of)
		for _ = 1, 2000 do run_batch() end
		collectgarbage()
		collectgarbage()
		local allocated = nfq._buffer_pool.allocated
		collectgarbage("stop")
		local before = collectgarbage("count")
		for _ = 1, 1000000 / batch.SIZE do run_batch() end
		local grown = collectgarbage("count") - before
		collectgarbage("restart")
		assert.equal(allocated, nfq._buffer_pool.allocated, "the buffer pool grew")
		assert.is_true(sent >= 1000000)
		assert.equal(1000000 + 2000 * batch.SIZE, s.stats.accepted + s.stats.matched)
		assert.is_not_nil(keep)
		return grown
	end
	local mixes = {
		{ "every packet a request", function() return segment end },
		{ "one packet in two a request", function(i) return i % 2 == 0 and segment or ack end },
	}
	for _, dna in ipairs(measured) do
		for _, m in ipairs(mixes) do
			local mix, packet_of = m[1], m[2]
			it(("allocates nothing over a million packets, %s: %s"):format(mix, dna), function()
				local grown = grown_over_a_million(dna, packet_of)
				assert.is_true(grown < 16, ("the Lua heap grew by %.1f KB over 1M packets"):format(grown))
			end)
		end
	end
end)

describe("scripts/examples/geneva.lua on the wire #kernel", function()
	H.isolated_tests()
	local ffi = require "ffi"
	local C = ffi.C
	local ADDR = { "169.254.35.1", "169.254.35.2" }
	local PORT = 5035
	local peer, capture_dir

	before_each(function()
		peer = "nfqgeneva" .. C.getpid()
		capture_dir = H.sh("mktemp -d"):gsub("%s+$", "")
		H.sh("ip netns add " .. peer)
		H.sh("ip link add nfqg0 type veth peer name nfqg1 netns " .. peer)
		H.sh(("ip addr add %s/24 dev nfqg0 && ip link set nfqg0 up"):format(ADDR[1]))
		H.sh(("ip netns exec %s sh -c 'ip addr add %s/24 dev nfqg1 && ip link set nfqg1 up && ip link set lo up'")
			:format(peer, ADDR[2]))
		H.sh(("iptables -A OUTPUT -o nfqg0 -p tcp --dport %d -m mark --mark 0x1/0x1 -j RETURN"):format(PORT))
		H.sh(("iptables -A OUTPUT -o nfqg0 -p tcp --dport %d -j NFQUEUE --queue-num 1"):format(PORT))
	end)

	after_each(function()
		os.execute(("pkill -F %s/tcpdump.pid 2>/dev/null"):format(capture_dir))
		os.execute("ip netns del " .. peer .. " 2>/dev/null")
		os.execute("rm -rf " .. capture_dir)
	end)

	-- fn() run in the peer namespace: the sockets it makes live there.
	local function in_peer(fn)
		local home = C.open("/proc/self/ns/net", 0)
		local there = C.open("/var/run/netns/" .. peer, 0)
		assert(home >= 0 and there >= 0, "cannot open the namespaces")
		assert(C.setns(there, 0x40000000) == 0, "setns")
		local ok, result = pcall(fn)
		assert(C.setns(home, 0x40000000) == 0, "cannot go back to the test's namespace")
		C.close(home)
		C.close(there)
		assert(ok, result)
		return result
	end

	-- tcpdump on the server's side of the veth, until stop(); then the TCP
	-- segments to the server as tshark reads them: { seq, len, hdr_len, ttl }.
	local captures = 0
	local function capture()
		captures = captures + 1
		local pcap, log = ("%s/c%d.pcap"):format(capture_dir, captures), ("%s/c%d.log"):format(capture_dir, captures)
		os.execute(("ip netns exec %s sh -c 'echo $$ > %s/tcpdump.pid; exec tcpdump --immediate-mode -U -n -i nfqg1 -w %s "
			.. "tcp dst port %d' > %s 2>&1 &"):format(peer, capture_dir, pcap, PORT, log))
		H.wait_for(function()
			return (H.read_file(log) or ""):find("listening on", 1, true)
		end, 10, "tcpdump to listen")
		return function()
			H.sleep(0.3)
			os.execute(("pkill -INT -F %s/tcpdump.pid"):format(capture_dir))
			H.wait_for(function()
				return (H.read_file(log) or ""):find("packets captured", 1, true)
			end, 10, "tcpdump to stop")
			local out = H.sh(("tshark -r %s -T fields -e tcp.seq_raw -e tcp.len -e tcp.hdr_len -e ip.ttl "
				.. "-e tcp.checksum.status -o tcp.check_checksum:TRUE 2>/dev/null"):format(pcap))
			local segments = {}
			for line in out:gmatch("[^\n]+") do
				local seq, len, hdr, ttl, status = line:match("^(%d+)\t(%d+)\t(%d+)\t(%d+)\t?(%S*)")
				if seq then
					segments[#segments + 1] = { seq = tonumber(seq), len = tonumber(len), hdr_len = tonumber(hdr),
						ttl = tonumber(ttl), checksum = status }
				end
			end
			return segments
		end
	end

	-- The captured segments that carry data, in order.
	local function data_segments(segments)
		local data = {}
		for _, s in ipairs(segments) do
			if s.len > 0 then data[#data + 1] = s end
		end
		return data
	end

	-- A connection that sends request and reads what the server got back.
	local function exchange(server, request)
		local c = H.tcp_connect(ADDR[2], PORT)
		local conn = H.wait_for(function() return server:accept(0.05) end, 10, "the connection")
		c:send(request)
		local got = ""
		H.wait_for(function()
			got = got .. (conn:recv(0.05) or "")
			return #got >= #request
		end, 10, "the request to arrive")
		c:close()
		conn:close()
		return got
	end

	local function run_daemon(strategy_path)
		local d = H.daemon(H.root .. "/scripts/examples/geneva.lua --queue 1 --no-gso --send --send-mark 0x1/0x1",
			"NFQ_GENEVA_STRATEGY=" .. strategy_path)
		d:wait_output("geneva: running")
		H.wait_queue_ready(1)
		return d
	end

	local request = "GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: nfqlua-spec\r\n\r\n"

	it("segments each request in three (8, 4, the rest) and the server reads it whole", function()
		local server = in_peer(function() return H.tcp_listen(ADDR[2], PORT) end)
		local path = H.tmpfile("[TCP:flags:PA]-fragment{tcp:8:True}(,fragment{tcp:4:True})-|\n")
		local d = run_daemon(path)
		local stop = capture()
		assert.equal(request, exchange(server, request))
		local data = data_segments(stop())
		assert.equal(3, #data)
		assert.same({ 8, 4, #request - 12 }, { data[1].len, data[2].len, data[3].len })
		assert.equal(data[1].seq + 8, data[2].seq)
		assert.equal(data[2].seq + 4, data[3].seq)
		d:signal("TERM")
		assert.equal(0, d:wait())
		local out = d:output()
		assert.truthy(out:find("fragment=2", 1, true), out)
		assert.truthy(out:find("sent=3", 1, true), out)
	end)

	it("sends a copy with a bad header the server's TCP drops, the request intact; swaps strategies on SIGHUP", function()
		local server = in_peer(function() return H.tcp_listen(ADDR[2], PORT) end)
		local path = H.tmpfile("[TCP:flags:PA]-duplicate(tamper{TCP:dataofs:replace:10}(tamper{TCP:chksum:corrupt},),)-|\n")
		local d = run_daemon(path)
		local stop = capture()
		assert.equal(request, exchange(server, request))
		local data = data_segments(stop())
		assert.equal(2, #data)
		assert.equal(40, data[1].hdr_len)
		assert.equal("0", data[1].checksum) -- tshark: bad
		assert.equal(data[1].seq, data[2].seq)
		assert.equal(#request, data[2].len)
		-- a strategy that does not parse keeps the running one
		local f = assert(io.open(path, "w"))
		f:write("[TCP:flags:PA]-duplicate(tamper{TCP:dataofs:replace:99},)-|\n")
		f:close()
		d:signal("HUP")
		d:wait_output("position 53: TCP:dataofs is 4 bits: 0 to 15, got 99")
		d:wait_output("keeps running")
		f = assert(io.open(path, "w"))
		f:write("# the TTL-limited copy of strategies.md\n[TCP:flags:PA]-duplicate(tamper{IP:ttl:replace:1},)-|\n")
		f:close()
		d:signal("HUP")
		d:wait_output("[TCP:flags:PA]-duplicate(tamper{IP:ttl:replace:1},)-|")
		stop = capture()
		assert.equal(request, exchange(server, request))
		local ttls = {}
		for _, s in ipairs(data_segments(stop())) do ttls[#ttls + 1] = s.ttl end
		assert.same({ 1, 64 }, ttls)
		d:signal("TERM")
		assert.equal(0, d:wait())
		-- the counters went on across the reloads: two requests, two duplicates
		assert.truthy(d:output():find("duplicate=2", 1, true), d:output())
	end)
end)

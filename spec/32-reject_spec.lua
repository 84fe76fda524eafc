-- pkt:reject(): the packet is dropped and its sender answered with what
-- iptables REJECT sends: the answers' bytes (nfq.testing), the packets that
-- get none, the fuzz corpus of the builders, and real clients that see
-- ECONNREFUSED at once on every hook (the kernel, in namespaces); with
-- "tcp-reset-both", both ends of a real connection see ECONNRESET at once.
local ffi = require "ffi"
local bit = require "bit"
local nfq = require "nfq"
local testing = require "nfq.testing"
local H = require "helpers.net"
local batch = require "helpers.batch"

local C = nfq._C

local function u16(s, i) return s:byte(i) * 256 + s:byte(i + 1) end
local function u32(s, i) return u16(s, i) * 65536 + u16(s, i + 2) end

-- Whether every length and checksum of an IP packet is already right.
local function checksums_ok(packet)
	local buf = ffi.new("uint8_t[?]", #packet)
	ffi.copy(buf, packet, #packet)
	C.nfq_fix_checksums(buf, #packet)
	return ffi.string(buf, #packet) == packet
end

-- Run pkt:reject(how) on one packet: the answer sent (or nil), what reject
-- returned, and the packet's verdict.
local function reject(packet, how, opts)
	local returned
	opts = opts or {}
	opts.send = true
	local r = testing.run(function(pkt) returned = { pkt:reject(how) } end, { packet }, opts)
	return r.sent[1] and r.sent[1].packet, returned, r.by_id[1].verdict, #r.sent
end

local function reject_error(packet, how, opts)
	local err
	local r = testing.run(function(pkt) err = select(2, pcall(pkt.reject, pkt, how)) end, { packet }, opts)
	return err, r.by_id[1].verdict, #r.sent
end

local tcp_syn = testing.packet { proto = "tcp", src = "10.1.1.1", dst = "10.2.2.2", sport = 40000, dport = 23,
	tcp_flags = 2, seq = 1000 }
local v6_syn = testing.packet { proto = "tcp", src = "fd00::1", dst = "fd00::2", sport = 40000, dport = 23,
	tcp_flags = 2, seq = 0xfffffffe }

describe("pkt:reject without a kernel", function()
	it("answers a TCP SYN with a reset that acknowledges it, from its destination", function()
		local answer, returned, verdict = reject(tcp_syn)
		assert.same({ true }, returned)
		assert.equal("drop", verdict)
		assert.equal(40, #answer)
		assert.is_true(checksums_ok(answer))
		assert.same({ 0x45, 0, 40, 0x4000, 64, 6 },
			{ answer:byte(1), answer:byte(2), u16(answer, 3), u16(answer, 7), answer:byte(9), answer:byte(10) })
		assert.equal(tcp_syn:sub(17, 20), answer:sub(13, 16))
		assert.equal(tcp_syn:sub(13, 16), answer:sub(17, 20))
		assert.same({ 23, 40000, 0, 1001, 0x50, 0x14, 0, 0 }, { u16(answer, 21), u16(answer, 23), u32(answer, 25),
			u32(answer, 29), answer:byte(33), answer:byte(34), u16(answer, 35), u16(answer, 39) })
	end)

	it("takes a reset's sequence number from the acknowledgment of a segment with ACK", function()
		local data = testing.packet { proto = "tcp", tcp_flags = 0x18, seq = 5, ack = 77, payload = "hello" }
		local answer = reject(data, "tcp-reset")
		assert.same({ 77, 0, 0x04 }, { u32(answer, 25), u32(answer, 29), answer:byte(34) })
		-- Without ACK, FIN and the data count: 10 + FIN + 3 bytes.
		local fin = testing.packet { proto = "tcp", tcp_flags = 0x01, seq = 10, payload = "abc" }
		answer = reject(fin)
		assert.same({ 0, 14, 0x14 }, { u32(answer, 25), u32(answer, 29), answer:byte(34) })
		assert.is_true(checksums_ok(answer))
	end)

	it("answers IPv6 TCP with an IPv6 reset, the acknowledgment wrapping around", function()
		local answer = reject(v6_syn)
		assert.equal(60, #answer)
		assert.is_true(checksums_ok(answer))
		assert.same({ 0x60, 20, 6, 64 }, { answer:byte(1), u16(answer, 5), answer:byte(7), answer:byte(8) })
		assert.equal(v6_syn:sub(25, 40), answer:sub(9, 24))
		assert.equal(v6_syn:sub(9, 24), answer:sub(25, 40))
		assert.same({ 23, 40000, 0, 0xffffffff, 0x14 },
			{ u16(answer, 41), u16(answer, 43), u32(answer, 45), u32(answer, 49), answer:byte(54) })
	end)

	it("tcp-reset-both resets the destination too, as from the sender: the segment's own seq, its ACK if it had one",
		function()
			local data = testing.packet { proto = "tcp", src = "10.1.1.1", dst = "10.2.2.2", sport = 40000, dport = 443,
				tcp_flags = 0x18, seq = 5, ack = 77, payload = "hello" }
			local returned
			local r = testing.run(function(pkt) returned = { pkt:reject("tcp-reset-both") } end, { data },
				{ send = true, send_mark = 0x10, send_mask = 0x10 })
			assert.same({ true }, returned)
			assert.same({ "drop", 2 }, { r.by_id[1].verdict, #r.sent })
			local to_sender, to_destination = r.sent[1].packet, r.sent[2].packet
			assert.equal(reject(data, "tcp-reset"), to_sender, "first the sender's reset, as tcp-reset sends it")
			assert.same({ 0x10, 0x10 }, { r.sent[1].mark, r.sent[2].mark })
			assert.equal(40, #to_destination)
			assert.is_true(checksums_ok(to_destination))
			assert.same({ 0x45, 0, 40, 0x4000, 64, 6 }, { to_destination:byte(1), to_destination:byte(2),
				u16(to_destination, 3), u16(to_destination, 7), to_destination:byte(9), to_destination:byte(10) })
			assert.equal(data:sub(13, 20), to_destination:sub(13, 20), "addresses as in the packet")
			assert.same({ 40000, 443, 5, 77, 0x50, 0x14, 0 }, { u16(to_destination, 21), u16(to_destination, 23),
				u32(to_destination, 25), u32(to_destination, 29), to_destination:byte(33), to_destination:byte(34),
				u16(to_destination, 39) })
			-- IPv6, a SYN (no ACK): a bare RST with the SYN's sequence number.
			r = testing.run(function(pkt) assert(pkt:reject("tcp-reset-both")) end, { v6_syn }, { send = true })
			assert.equal(2, #r.sent)
			to_destination = r.sent[2].packet
			assert.equal(60, #to_destination)
			assert.is_true(checksums_ok(to_destination))
			assert.same({ 0x60, 20, 6, 64 }, { to_destination:byte(1), u16(to_destination, 5), to_destination:byte(7),
				to_destination:byte(8) })
			assert.equal(v6_syn:sub(9, 40), to_destination:sub(9, 40))
			assert.same({ 40000, 23, 0xfffffffe, 0, 0x04 }, { u16(to_destination, 41), u16(to_destination, 43),
				u32(to_destination, 45), u32(to_destination, 49), to_destination:byte(54) })
			-- Neither reset for a reset; a raise for anything but TCP.
			local answer, none = reject(testing.packet { proto = "tcp", tcp_flags = 0x14 }, "tcp-reset-both")
			assert.is_nil(answer)
			assert.matches("no answer to a TCP reset (the packet was dropped)", none[2], 1, true)
			assert.matches("nfq: reject: tcp%-reset%-both answers TCP segments only",
				reject_error(testing.packet { proto = "udp" }, "tcp-reset-both", { send = true }))
		end)

	-- As pkt:reject() in spec 15: the packet object stays unallocated.
	it("tcp-reset-both allocates nothing per packet", function()
		local q = ffi.gc(C.nfq_queue_open_offline(C.NFQ_COPY_PACKET, 65535), C.nfq_queue_close)
		C.nfq_queue_set_sender(q, C.nfq_sender_open(1, 1, 0))
		local queue = nfq._adopt(q, function(pkt) pkt:reject("tcp-reset-both") end)
		local bytes = testing.packet { proto = "tcp", tcp_flags = 0x18, seq = 5, ack = 77, payload = "hello" }
		local round = batch.offline_round(q, queue, bytes)
		jit.flush()
		local grown = batch.heap_growth(round, 200, 3000)
		assert.is_true(grown < 16, ("the Lua heap grew by %.1f KB over 192000 packets"):format(grown))
		assert.equal(3200 * 64 * 2, tonumber(q.stats.sent))
	end)

	it("answers UDP with an ICMP port unreachable quoting the datagram, at most 576 bytes in all", function()
		local udp = testing.packet { proto = "udp", src = "10.1.1.1", dst = "10.2.2.2", payload = "probe" }
		local answer, returned = reject(udp)
		assert.same({ true }, returned)
		assert.equal(28 + #udp, #answer)
		assert.is_true(checksums_ok(answer))
		assert.same({ 0x45, 0xc0, 0, 64, 1, 3, 3 }, { answer:byte(1), answer:byte(2), u16(answer, 7),
			answer:byte(9), answer:byte(10), answer:byte(21), answer:byte(22) })
		assert.equal(udp:sub(17, 20), answer:sub(13, 16))
		assert.equal(udp, answer:sub(29))
		local big = testing.packet { proto = "udp", payload = ("x"):rep(1000) }
		answer = reject(big)
		assert.equal(576, #answer)
		assert.equal(big:sub(1, 548), answer:sub(29))
		assert.is_true(checksums_ok(answer))
	end)

	it("gives each ICMP answer its code, and the ICMPv6 counterpart to IPv6 packets", function()
		local udp4 = testing.packet { proto = "udp" }
		local udp6 = testing.packet { proto = "udp", src = "fd00::1", dst = "fd00::2", payload = ("y"):rep(1400) }
		local codes = {
			["icmp-port-unreachable"] = { 3, 4 }, ["icmp-host-unreachable"] = { 1, 3 },
			["icmp-net-unreachable"] = { 0, 0 }, ["icmp-admin-prohibited"] = { 13, 1 },
			["icmp-host-prohibited"] = { 10, 1 }, ["icmp-net-prohibited"] = { 9, 1 },
			["icmp6-port-unreachable"] = { 3, 4 }, ["icmp6-addr-unreachable"] = { 1, 3 },
			["icmp6-no-route"] = { 0, 0 }, ["icmp6-adm-prohibited"] = { 13, 1 },
		}
		for how, code in pairs(codes) do
			local a4, a6 = reject(udp4, how), reject(udp6, how)
			assert.same({ 3, code[1] }, { a4:byte(21), a4:byte(22) }, how)
			assert.same({ 58, 1, code[2] }, { a6:byte(7), a6:byte(41), a6:byte(42) }, how)
			assert.equal(1280, #a6, "as much as fits in the IPv6 minimum MTU")
			assert.equal(udp6:sub(1, 1232), a6:sub(49))
			assert.is_true(checksums_ok(a4) and checksums_ok(a6), how)
		end
		local a = reject(tcp_syn, "icmp-admin-prohibited")
		assert.same({ 1, 3, 13 }, { a:byte(10), a:byte(21), a:byte(22) })
		a = reject(testing.packet { proto = "icmp", icmp_type = 8 })
		assert.same({ 3, 3 }, { a:byte(21), a:byte(22) }, "an echo request is no error: it gets an answer")
	end)

	it("answers no reset, ICMP error, later fragment, broadcast or multicast address or bad checksum", function()
		local later4 = testing.packet { proto = "udp", payload = "abcdefgh" }
		later4 = later4:sub(1, 6) .. "\0\3" .. later4:sub(9)
		local v6 = testing.packet { proto = "udp", src = "fd00::1", dst = "fd00::2" }
		local later6 = v6:sub(1, 4) .. "\0\16\44" .. v6:sub(8, 40) .. "\17\0\0\16\0\0\0\42" .. "12345678"
		local bad_sum = tcp_syn:sub(1, 36) .. "\0\0" .. tcp_syn:sub(39)
		local cases = {
			{ testing.packet { proto = "tcp", tcp_flags = 4 }, "no answer to a TCP reset" },
			{ testing.packet { proto = "tcp", tcp_flags = 0x14 }, "no answer to a TCP reset" },
			{ testing.packet { proto = "icmp", icmp_type = 3, icmp_code = 3 }, "no answer to an ICMP error" },
			{ testing.packet { proto = "icmp", icmp_type = 11 }, "no answer to an ICMP error" },
			{ testing.packet { proto = "icmpv6", src = "fd00::1", dst = "fd00::2", icmp_type = 1 },
				"no answer to an ICMP error" },
			{ later4, "no answer to a fragment other than the first" },
			{ later6, "no answer to a fragment other than the first" },
			{ testing.packet { dst = "224.0.0.251" }, "no answer from or to a broadcast, multicast or unspecified address" },
			{ testing.packet { dst = "255.255.255.255" }, "from or to a broadcast" },
			{ testing.packet { src = "0.0.0.0" }, "from or to a broadcast" },
			{ testing.packet { src = "fd00::1", dst = "ff02::1" }, "from or to a broadcast" },
			{ testing.packet { src = "::", dst = "fd00::1" }, "from or to a broadcast" },
			{ bad_sum, "no answer to a packet whose checksum is wrong" },
			{ tcp_syn:sub(1, 30), "the copy ends before the transport header does" },
		}
		for i, case in ipairs(cases) do
			local answer, returned, verdict = reject(case[1])
			assert.is_nil(answer, "case " .. i)
			assert.is_nil(returned[1], "case " .. i)
			assert.matches(case[2], returned[2], 1, true)
			assert.matches("%(the packet was dropped%)$", returned[2])
			assert.equal("drop", verdict, "case " .. i)
		end
	end)

	it("raises for a wrong answer, a reset for anything but TCP, COPY_META, or sending that is off, and gives no verdict",
		function()
			local udp = testing.packet { proto = "udp" }
			local err, verdict, sent = reject_error(udp, "tcp-reset", { send = true })
			assert.matches("nfq: reject: tcp%-reset answers TCP segments only, and packet 1 is not one; give an ICMP "
				.. "answer instead$", err)
			assert.same({ "accept", 0 }, { verdict, sent }, "the fallback verdict, nothing sent")
			err = reject_error(udp, "icmp-unreachable", { send = true })
			assert.matches('nfq: reject: unknown answer string "icmp%-unreachable"; the answers are icmp%-admin%-prohibited, '
				.. "icmp%-host%-prohibited, ", err)
			assert.matches("nfq: reject: unknown answer number 3;", reject_error(udp, 3, { send = true }))
			assert.matches("nfq: reject: sending is off: run nfqlua with %-%-send", reject_error(udp))
			assert.matches("nfq: reject: packet 1 has no payload to answer: the queue copies metadata only",
				reject_error(udp, nil, { send = true, mode = nfq.COPY_META }))
		end)

	it("answers with the queue's send mark", function()
		local r = testing.run(function(pkt) pkt:reject() end, { tcp_syn },
			{ send = true, send_mark = 0x10, send_mask = 0x10 })
		assert.equal(0x10, r.sent[1].mark)
		assert.same({ "drop", true }, { r[1].verdict, r[2].sent })
	end)

	it("reject_port.lua rejects its ports and accepts the rest", function()
		local getenv, stderr = os.getenv, io.stderr
		local fake = stub(os, "getenv", function(k)
			if k == "NFQ_REJECT_PORTS" then return "23,5555" end
			return getenv(k)
		end)
		local written = {}
		io.stderr = { write = function(_, line) written[#written + 1] = line end } -- luacheck: ignore 122
		local ok, r = pcall(testing.run, H.root .. "/scripts/examples/reject_port.lua", {
			testing.packet { proto = "tcp", dport = 23 }, testing.packet { proto = "udp", dport = 5555 },
			testing.packet { proto = "udp", dport = 53 }, testing.packet { proto = "tcp", dport = 23, tcp_flags = 4 },
		}, { send = true })
		io.stderr = stderr -- luacheck: ignore 122
		fake:revert()
		assert(ok, r)
		assert.same({ "reject_port: answered 2 packets, dropped 1 without an answer\n" }, written)
		assert.same({ "drop", "drop", "accept", "drop" },
			{ r.by_id[1].verdict, r.by_id[2].verdict, r.by_id[3].verdict, r.by_id[4].verdict })
		assert.equal(2, #r.sent)
		assert.same({ 6, 0x14 }, { r.sent[1].packet:byte(10), r.sent[1].packet:byte(34) })
		assert.same({ 1, 3, 3 }, { r.sent[2].packet:byte(10), r.sent[2].packet:byte(21), r.sent[2].packet:byte(22) })
	end)

	it("shows the answers under nfqlua --replay --send, and writes them to --out between the accepted packets",
		function()
			local function le32(n)
				return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256,
					math.floor(n / 16777216))
			end
			local frames = {
				testing.packet { proto = "tcp", dport = 23, payload = "one" },
				testing.packet { proto = "udp", dport = 53, payload = "two" },
				testing.packet { proto = "udp", dport = 5555, payload = "three" },
			}
			-- A raw-IP pcap (link type 101), packet i at 1700000000 + i seconds.
			local out = { le32(0xa1b2c3d4), "\2\0\4\0", le32(0), le32(0), le32(65535), le32(101) }
			for i, f in ipairs(frames) do out[#out + 1] = le32(1700000000 + i) .. le32(0) .. le32(#f) .. le32(#f) .. f end
			local cap, kept = H.tmpfile(table.concat(out), ".pcap"), H.tmpfile()
			local script = H.root .. "/scripts/examples/reject_port.lua"
			local rc, text = H.run_nfqlua(("--replay %s %s --send --send-mark 0x1/0x1 --out %s"):format(cap, script, kept),
				"NFQ_REJECT_PORTS=23,5555 ")
			assert.equal(0, rc, text)
			local lines = {}
			for line in text:gmatch("[^\n]+") do
				if not line:find("^reject_port:") then lines[#lines + 1] = line end
			end
			assert.same({
				"#1 1700000001.000000 TCP packet, 43 bytes -> drop",
				"sent 1700000001.000000 TCP packet, 40 bytes mark=0x1",
				"#2 1700000002.000000 UDP packet, 31 bytes -> accept",
				"#3 1700000003.000000 UDP packet, 33 bytes -> drop",
				"sent 1700000003.000000 ICMP packet, 61 bytes mark=0x1",
			}, { lines[1], lines[2], lines[3], lines[4], lines[5] })
			assert.matches("accept=1 drop=2 .- sent=2 ", lines[6])
			local dump = H.sh("tcpdump -r " .. kept .. " -n 2>/dev/null")
			local order = {}
			for proto in dump:gmatch("IP [%d.]+ > [%d.:]+ (%a+)") do order[#order + 1] = proto end
			assert.same({ "Flags", "domain", "ICMP" }, order, dump)
			rc, text = H.run_nfqlua(("--replay %s %s"):format(cap, script), "NFQ_REJECT_PORTS=23,5555 ")
			assert.equal(0, rc)
			assert.matches("script error: .-reject: sending is off: run nfqlua with %-%-send", text)
		end)

	it("replays its fuzz corpus through the builders without a crash", function()
		local files = H.sh(("ls %s/spec/fuzz/corpus/reject | wc -l"):format(H.root))
		local out = H.sh(("cd %s && build/replay_reject spec/fuzz/corpus/reject/*"):format(H.root))
		assert.is_true(tonumber(files) > 20)
		assert.equal(tonumber(files), tonumber(out:match("replayed (%d+) inputs")))
	end)
end)

local ECONNREFUSED = 111

if not pcall(ffi.typeof, "struct nfq_reject_spec_in6") then
	ffi.cdef [[
	struct nfq_reject_spec_in { uint16_t family; uint16_t port; uint8_t addr[4]; uint8_t zero[8]; };
	struct nfq_reject_spec_in6 { uint16_t family; uint16_t port; uint32_t flowinfo; uint8_t addr[16]; uint32_t scope; };
	]]
end

-- A raw ICMP (or ICMPv6) socket: recv(timeout) gives the next message.
local function raw_icmp(v6)
	local fd = ffi.C.socket(v6 and 10 or 2, 3, v6 and 58 or 1)
	assert(fd >= 0, "raw ICMP socket")
	local buf = ffi.new("uint8_t[2048]")
	local pfd = ffi.new("struct pollfd[1]")
	return {
		recv = function(timeout)
			pfd[0].fd, pfd[0].events = fd, 1
			if ffi.C.poll(pfd, 1, timeout * 1000) <= 0 then return nil end
			return ffi.string(buf, ffi.C.recv(fd, buf, 2048, 0))
		end,
		close = function() ffi.C.close(fd) end,
	}
end

-- A UDP socket connected to port on loopback: send(s) returns what send()
-- did, and errno on failure.
local function connected_udp(v6, port)
	local fd = ffi.C.socket(v6 and 10 or 2, 2, 0)
	local sa = ffi.new(v6 and "struct nfq_reject_spec_in6" or "struct nfq_reject_spec_in")
	sa.family, sa.port = v6 and 10 or 2, bit.rshift(bit.bswap(port), 16)
	if v6 then sa.addr[15] = 1 else sa.addr[0], sa.addr[3] = 127, 1 end
	assert(ffi.C.connect(fd, sa, ffi.sizeof(sa)) == 0, "connect")
	return {
		send = function(data)
			local n = tonumber(ffi.C.send(fd, data, #data, 0x40))
			if n < 0 then return n, ffi.errno() end
			return n
		end,
		close = function() ffi.C.close(fd) end,
	}
end

-- The client side, in Python: a TCP connect, or a connected UDP socket's
-- second send, and how it ended ("refused 0.012" or the error).
local CLIENT = [[
import socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
t = time.time()
try:
    if sys.argv[1] == "tcp":
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect((sys.argv[2], int(sys.argv[3])))
        print("connected")
    else:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.connect((sys.argv[2], int(sys.argv[3])))
        s.send(b"probe")
        time.sleep(0.5)
        t = time.time()
        s.send(b"again")
        print("sent")
except ConnectionRefusedError:
    print("refused %.3f" % (time.time() - t))
except Exception as e:
    print(repr(e))
]]

-- Both ends of a TCP connection, in Python: the client (in namespace
-- argv[4], if given) sends one segment of data, then each end reads; how
-- each read ended ("reset", "eof", "data" or "timeout") and how long after
-- the send.
local CONNECTION = [[
import ctypes, os, socket, sys, time
addr, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
server = socket.socket(family, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((addr, port))
server.listen(1)
if len(sys.argv) > 4:
    # A socket stays in the namespace it was made in.
    ns = os.open("/run/netns/" + sys.argv[4], os.O_RDONLY)
    assert ctypes.CDLL(None, use_errno=True).setns(ns, 0x40000000) == 0
client = socket.socket(family, socket.SOCK_STREAM)
client.settimeout(5)
client.connect((addr, port))
accepted, _ = server.accept()
accepted.settimeout(float(sys.argv[3]))
t = time.time()
client.send(b"hello")
def outcome(s):
    try:
        return "eof" if s.recv(100) == b"" else "data"
    except ConnectionResetError:
        return "reset"
    except socket.timeout:
        return "timeout"
ends = []
for s in (client, accepted):
    ends.append("%s %.3f" % (outcome(s), time.time() - t))
print("client %s server %s" % tuple(ends))
]]

describe("pkt:reject #kernel", function()
	local client_py
	H.isolated_tests()
	before_each(function() client_py = H.tmpfile(CLIENT, ".py") end)

	-- Run the client in the background (in namespace ns, if given) while
	-- the queue runs; its one line of output.
	local function refused(q, proto, addr, port, ns)
		local out = H.tmpfile("")
		os.execute(("%s python3 %s %s %s %d > %s 2>&1 &"):format(ns and ("ip netns exec " .. ns) or "", client_py, proto,
			addr, port, out))
		local line
		H.wait_for(function()
			if q then assert(q:run(false)) end
			line = H.read_file(out):match("[^\n]+")
			return line
		end, 8, "the client to finish")
		return line
	end

	local function assert_refused_at_once(line)
		local seconds = tonumber(line:match("^refused (%S+)$"))
		assert.is_not_nil(seconds, line)
		assert.is_true(seconds < 0.5, line)
	end

	it("refuses a TCP connect at once on OUTPUT, over IPv4 and IPv6, and a connected UDP socket's next send", function()
		for _, ipt in ipairs { "iptables", "ip6tables" } do
			H.sh(ipt .. " -A OUTPUT -m mark --mark 0x1/0x1 -j RETURN")
			H.sh(ipt .. " -A OUTPUT -o lo -p tcp --syn --dport 7301 -j NFQUEUE --queue-num 1")
			H.sh(ipt .. " -A OUTPUT -o lo -p udp --dport 7302 -j NFQUEUE --queue-num 1")
		end
		local answered = 0
		local q = H.bound_queue(1, function(pkt)
			assert(pkt:reject())
			answered = answered + 1
		end, { send = true, send_mark = 1, send_mask = 1 })
		finally(function() q:close() end)
		assert_refused_at_once(refused(q, "tcp", "127.0.0.1", 7301))
		assert_refused_at_once(refused(q, "tcp", "::1", 7301))
		assert_refused_at_once(refused(q, "udp", "127.0.0.1", 7302))
		assert_refused_at_once(refused(q, "udp", "::1", 7302))
		assert.equal(4, answered)
		assert.same({ 4, 4, 0 }, { q:stats().dropped, q:stats().sent, q:stats().send_errors })
	end)

	-- A queue that refuses TCP segments with data with pkt:reject(how()) and
	-- accepts the rest (the handshake).
	local function data_refused(how, opts)
		local q = H.bound_queue(1, function(pkt)
			local _, offset = pkt:transport()
			if #pkt:get_payload() > offset + pkt:tcp().header_length then
				assert(pkt:reject(how()))
			else
				pkt:accept()
			end
		end, opts)
		finally(function() q:close() end)
		return q
	end

	-- Run CONNECTION to addr:port (its client in namespace ns, if given)
	-- while q runs: the outcome of each end, as "client reset 0.02 server ...".
	local function connection(q, addr, port, server_wait, ns)
		local script, out = H.tmpfile(CONNECTION, ".py"), H.tmpfile("")
		os.execute(("python3 %s %s %d %d %s > %s 2>&1 &"):format(script, addr, port, server_wait, ns or "", out))
		local line
		H.wait_for(function()
			assert(q:run(false))
			line = H.read_file(out):match("[^\n]+")
			return line
		end, 15, "the connection's ends to finish")
		return line
	end

	-- Both ends saw the reset, well within half a second of the refused send.
	local function assert_both_reset(line)
		local client, client_after, server, server_after = line:match("^client (%a+) (%S+) server (%a+) (%S+)$")
		assert.equal("reset", client, line)
		assert.is_true(server == "reset" or server == "eof", line)
		assert.is_true(tonumber(client_after) < 0.5 and tonumber(server_after) < 0.5, line)
	end

	it("tcp-reset-both resets both ends of a connection at once, over IPv4 and IPv6; tcp-reset the sender only",
		function()
			for _, ipt in ipairs { "iptables", "ip6tables" } do
				H.sh(ipt .. " -A OUTPUT -m mark --mark 0x1/0x1 -j RETURN")
				H.sh(ipt .. " -A OUTPUT -o lo -p tcp --dport 7304 -j NFQUEUE --queue-num 1")
			end
			local how = "tcp-reset-both"
			local q = data_refused(function() return how end, { send = true, send_mark = 1, send_mask = 1 })
			assert_both_reset(connection(q, "127.0.0.1", 7304, 5))
			assert_both_reset(connection(q, "::1", 7304, 5))
			assert.same({ 2, 4, 0 }, { q:stats().dropped, q:stats().sent, q:stats().send_errors })
			-- Without the destination's reset, the server is left waiting.
			how = "tcp-reset"
			assert.matches("^client reset %S+ server timeout ", connection(q, "127.0.0.1", 7304, 1))
		end)

	-- A namespace name for this test, removed after it.
	local function peer_namespace(tag)
		local name = ("nfqrej%s%d"):format(tag, ffi.C.getpid())
		finally(function() os.execute("ip netns del " .. name .. " 2>/dev/null") end)
		H.sh("ip netns add " .. name)
		H.sh("ip netns exec " .. name .. " ip link set lo up")
		return name
	end

	-- A veth pair from this namespace (ours, with addresses ip4 and ip6 .1)
	-- to ns (peer, .2), which routes everything through us.
	local function link(ours, peer, ns, ip4, ip6)
		H.sh(("ip link add %s type veth peer name %s netns %s"):format(ours, peer, ns))
		H.sh(("ip addr add %s.1/24 dev %s && ip addr add %s::1/64 dev %s nodad && ip link set %s up")
			:format(ip4, ours, ip6, ours, ours))
		H.sh(("ip netns exec %s sh -c 'ip addr add %s.2/24 dev %s && ip addr add %s::2/64 dev %s nodad && "
			.. "ip link set %s up && ip route add default via %s.1 && ip -6 route add default via %s::1'")
			:format(ns, ip4, peer, ip6, peer, peer, ip4, ip6))
	end

	it("refuses a connect and a datagram from another host at once on PREROUTING and INPUT, over IPv4 and IPv6",
		function()
			local peer = peer_namespace("in")
			link("nfqr0", "nfqr1", peer, "169.254.91", "fd00:91")
			local hooks = {}
			for _, ipt in ipairs { "iptables", "ip6tables" } do
				H.sh(ipt .. " -t mangle -A PREROUTING -i nfqr0 -p tcp --dport 7310 -j NFQUEUE --queue-num 1")
				H.sh(ipt .. " -A INPUT -i nfqr0 -p tcp --dport 7311 -j NFQUEUE --queue-num 1")
				H.sh(ipt .. " -A INPUT -i nfqr0 -p udp --dport 7312 -j NFQUEUE --queue-num 1")
			end
			local q = H.bound_queue(1, function(pkt)
				hooks[pkt.hook] = true
				assert(pkt:reject())
			end, { send = true })
			finally(function() q:close() end)
			for _, addr in ipairs { "169.254.91.1", "fd00:91::1" } do
				assert_refused_at_once(refused(q, "tcp", addr, 7310, peer))
				assert_refused_at_once(refused(q, "tcp", addr, 7311, peer))
				assert_refused_at_once(refused(q, "udp", addr, 7312, peer))
			end
			assert.same({ [C.NFQ_HOOK_PREROUTING] = true, [C.NFQ_HOOK_INPUT] = true }, hooks)
		end)

	it("tcp-reset-both resets both ends of a connection from another host at once on INPUT, over IPv4 and IPv6",
		function()
			local peer = peer_namespace("both")
			link("nfqrc0", "nfqrc1", peer, "169.254.95", "fd00:95")
			for _, ipt in ipairs { "iptables", "ip6tables" } do
				H.sh(ipt .. " -A INPUT -i nfqrc0 -p tcp --dport 7340 -j NFQUEUE --queue-num 1")
			end
			local q = data_refused(function() return "tcp-reset-both" end, { send = true })
			assert_both_reset(connection(q, "169.254.95.1", 7340, 5, peer))
			assert_both_reset(connection(q, "fd00:95::1", 7340, 5, peer))
			assert.same({ 4, 0 }, { q:stats().sent, q:stats().send_errors })
		end)

	it("refuses a connect and a datagram through a router at once on FORWARD, over IPv4 and IPv6", function()
		local client, server = peer_namespace("c"), peer_namespace("s")
		link("nfqra0", "nfqra1", client, "169.254.92", "fd00:92")
		link("nfqrb0", "nfqrb1", server, "169.254.93", "fd00:93")
		H.sh("sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
		for _, ipt in ipairs { "iptables", "ip6tables" } do
			H.sh(ipt .. " -A FORWARD -p tcp --syn --dport 7320 -j NFQUEUE --queue-num 1")
			H.sh(ipt .. " -A FORWARD -p udp --dport 7321 -j NFQUEUE --queue-num 1")
		end
		local hooks = {}
		local q = H.bound_queue(1, function(pkt)
			hooks[pkt.hook] = true
			assert(pkt:reject())
		end, { send = true })
		finally(function() q:close() end)
		for _, addr in ipairs { "169.254.93.2", "fd00:93::2" } do
			assert_refused_at_once(refused(q, "tcp", addr, 7320, client))
			assert_refused_at_once(refused(q, "udp", addr, 7321, client))
		end
		assert.same({ [C.NFQ_HOOK_FORWARD] = true }, hooks)
		assert.same({ 4, 0 }, { q:stats().sent, q:stats().send_errors })
	end)

	it("reject_port.lua in the daemon refuses the listed ports to another host and lets the rest through", function()
		local peer = peer_namespace("ex")
		link("nfqre0", "nfqre1", peer, "169.254.94", "fd00:94")
		for _, ipt in ipairs { "iptables", "ip6tables" } do
			H.sh(ipt .. " -A INPUT -m mark --mark 0x1/0x1 -j RETURN")
			H.sh(ipt .. " -A INPUT -i nfqre0 -j NFQUEUE --queue-num 1")
		end
		local open = H.tcp_listen("169.254.94.1", 7331)
		finally(function() open:close() end)
		local d = H.daemon(H.root .. "/scripts/examples/reject_port.lua --queue 1 --send --send-mark 0x1/0x1",
			"NFQ_REJECT_PORTS=7330,7332")
		H.wait_queue_ready(1)
		assert_refused_at_once(refused(nil, "tcp", "169.254.94.1", 7330, peer))
		assert_refused_at_once(refused(nil, "tcp", "fd00:94::1", 7330, peer))
		assert_refused_at_once(refused(nil, "udp", "169.254.94.1", 7332, peer))
		assert.equal("connected", refused(nil, "tcp", "169.254.94.1", 7331, peer))
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.matches("reject_port: answered 3 packets, dropped 0 without an answer", d:output(), 1, true)
		assert.matches("sent=3 send_errors=0", d:output(), 1, true)
	end)

	it("quotes the datagram it refuses in its ICMP and ICMPv6 error, which the socket reports", function()
		for _, ipt in ipairs { "iptables", "ip6tables" } do
			H.sh(ipt .. " -A OUTPUT -m mark --mark 0x1/0x1 -j RETURN")
			H.sh(ipt .. " -A OUTPUT -o lo -p udp --dport 7303 -j NFQUEUE --queue-num 1")
		end
		local original
		local q = H.bound_queue(1, function(pkt)
			original = pkt:get_payload()
			assert(pkt:reject())
		end, { send = true, send_mark = 1 })
		finally(function() q:close() end)
		for _, family in ipairs { "ipv4", "ipv6" } do
			local v6 = family == "ipv6"
			local icmp = raw_icmp(v6)
			local udp = connected_udp(v6, 7303)
			finally(function() icmp.close() udp.close() end)
			original = nil
			assert.equal(5, udp.send("probe"))
			H.pump(q, function() return original end)
			-- IPv4 raw sockets see the IP header too, ICMPv6 ones the message only.
			local message = assert(icmp.recv(1))
			if not v6 then message = message:sub(21) end
			assert.same({ v6 and 1 or 3, v6 and 4 or 3 }, { message:byte(1), message:byte(2) })
			assert.equal(original, message:sub(9), family .. ": the whole datagram quoted")
			assert.equal(33 + (v6 and 20 or 0), #original)
			assert.same({ -1, ECONNREFUSED }, { udp.send("again") }, family)
		end
	end)
end)

-- nfq.send and q:send: whole IP packets sent through raw sockets, checked
-- before the kernel sees them, with the send mark, in order with the
-- verdicts of their batch; recorded by nfq.testing.
local ffi = require "ffi"
local bit = require "bit"
local nfq = require "nfq"
local testing = require "nfq.testing"
local H = require "helpers.net"
local batch = require "helpers.batch"

local C = nfq._C
local AF_INET, SOCK_RAW, IPPROTO_UDP = 2, 3, 17

local function udp_packet(payload, opts)
	opts = opts or {}
	return testing.packet { src = opts.src or "127.0.0.1", dst = opts.dst or "127.0.0.1", sport = opts.sport or 7100,
		dport = opts.dport or 7101, payload = payload, id = opts.id or 0x4242 }
end

-- A packet with its IPv4 total length or IPv6 payload length made to lie.
local function with_length(packet, n)
	local at = packet:byte(1) >= 0x60 and 5 or 3
	return packet:sub(1, at - 1) .. string.char(bit.rshift(n, 8), n % 256) .. packet:sub(at + 2)
end

local function send_error(...)
	local ok, err = pcall(nfq.send, ...)
	assert.is_false(ok, "nfq.send raised no error")
	return err
end

describe("nfq.send without a kernel (nfq.testing)", function()
	local trigger = testing.packet { payload = "go" }

	it("records sent packets in order between the verdicts, with the send mark", function()
		local a, b = udp_packet("A"), udp_packet("B", { src = "::1", dst = "::1" })
		local r = testing.run(function(pkt)
			assert(nfq.send(a))
			pkt:accept()
			assert(nfq.send(b, { mark = 0x100 }))
		end, { trigger, trigger }, { send = true, send_mark = 0x1, send_mask = 0x1 })
		assert.equal(6, #r)
		local kinds = {}
		for i, e in ipairs(r) do kinds[i] = e.sent and ("sent " .. e.packet:sub(-1)) or e.verdict end
		assert.same({ "sent A", "accept", "sent B", "sent A", "accept", "sent B" }, kinds)
		assert.same({ a, 0x1 }, { r[1].packet, r[1].mark })
		assert.same({ b, 0x101 }, { r[3].packet, r[3].mark }, "the send mask's bits kept")
		assert.equal(4, #r.sent)
		assert.equal(r[4], r.sent[3])
		assert.same({ 1, 2 }, { r.by_id[1].id, r.by_id[2].id })
	end)

	it("takes the script's mark whole without a send mask, and the send mark by default", function()
		local r = testing.run(function(pkt)
			nfq.send(pkt:get_payload())
			nfq.send(pkt:get_payload(), { mark = 7 })
			pkt:drop()
		end, { trigger }, { send = true, send_mark = 0x30 })
		assert.same({ 0x30, 7 }, { r.sent[1].mark, r.sent[2].mark })
	end)

	it("sends a string, a pointer and a length, a packet, or any object with view()", function()
		local bytes = udp_packet("view")
		local buf = ffi.new("uint8_t[?]", #bytes)
		ffi.copy(buf, bytes, #bytes)
		local buffer = { view = function() return buf, #bytes end }
		local r = testing.run(function(pkt)
			assert(nfq.send(bytes))
			assert(nfq.send(buf, #bytes))
			assert(nfq.send(buf, #bytes, { mark = 3 }))
			assert(nfq.send(buffer))
			assert(nfq.send(pkt))
			pkt:drop()
		end, { bytes }, { send = true })
		assert.equal(5, #r.sent)
		for _, s in ipairs(r.sent) do assert.equal(bytes, s.packet) end
		assert.equal(3, r.sent[3].mark)
	end)

	it("sends from on_start, on_timer and on_stop, in order with the verdicts given there", function()
		local held
		local r = testing.run({
			on_start = function() nfq.send(udp_packet("start")) end,
			on_packet = function(pkt) held = pkt:retain() end,
			on_timer = function()
				if held then
					held:accept()
					held = nil
					nfq.send(udp_packet("timer"))
				end
			end,
			timer_interval = 0.5,
			on_stop = function() nfq.send(udp_packet("stop")) end,
		}, { trigger }, { send = true })
		local kinds = {}
		for i, e in ipairs(r) do kinds[i] = e.sent and H.udp4_data(e.packet) or e.verdict end
		assert.same({ "start", "accept", "timer", "stop" }, kinds)
	end)

	it("refuses every malformed packet with a reason, and sends nothing", function()
		local v4, v6 = udp_packet("x"), udp_packet("x", { src = "::1", dst = "::1" })
		local cases = {
			{ "", "malformed packet: it is empty" },
			{ v4:sub(1, 19), "malformed packet: 19 bytes are shorter than an IPv4 header (20)" },
			{ with_length(v4, #v4 + 4), "malformed IPv4 header: its total length is 33, but the packet has 29 bytes" },
			{ with_length(v4, #v4 - 1), "malformed IPv4 header: its total length is 28, but the packet has 29 bytes" },
			{ v4 .. "trailing", "malformed IPv4 header: its total length is 29, but the packet has 37 bytes" },
			{ "\79" .. v4:sub(2, 20), "malformed IPv4 header: its header length is 60 bytes, in a packet of 20" },
			{ "\68" .. v4:sub(2), "malformed IPv4 header: its header length is 16 bytes, in a packet of 29" },
			{ v6:sub(1, 39), "malformed packet: 39 bytes are shorter than an IPv6 header (40)" },
			{ with_length(v6, #v6 - 40 + 1), "malformed IPv6 header: its payload length is 10, but 9 bytes follow the header" },
			{ "\32" .. v4:sub(2), "malformed packet: its IP version is 2, not 4 or 6" },
		}
		local errors, expected = {}, {}
		local r = testing.run(function(pkt)
			for i, case in ipairs(cases) do
				local ok, err = nfq.send(case[1])
				errors[i] = ok == nil and err or "sent"
				expected[i] = case[2]
			end
			pkt:drop()
		end, { trigger }, { send = true })
		assert.same(expected, errors)
		assert.equal(0, #r.sent)
	end)

	it("raises for wrong arguments, and for sending that is off, with the fix", function()
		local errs = {}
		testing.run(function(pkt)
			errs.off = select(2, pcall(nfq.send, udp_packet("x")))
			pkt:accept()
		end, { trigger })
		assert.matches("nfq.send: sending is off: run nfqlua with %-%-send %(in library mode, bind the queue with "
			.. "send = true; in nfq.testing.run, opts.send = true%)", errs.off)
		testing.run(function(pkt)
			errs.number = send_error(5)
			errs.table = send_error({})
			errs.pointer = send_error(ffi.new("uint8_t[4]"))
			errs.length = send_error("abc", 3)
			errs.negative = send_error(ffi.new("uint8_t[4]"), -1)
			errs.opts = send_error(udp_packet("x"), { mrak = 1 })
			errs.mark = send_error(udp_packet("x"), { mark = 2 ^ 32 })
			errs.meta = select(2, pcall(function() nfq.send(pkt) end))
			pkt:accept()
		end, { trigger }, { send = true, mode = nfq.COPY_META })
		assert.matches("nfq.send expects a string, a packet or buffer %(an object with view%(%)%), or a pointer and "
			.. "a length, got number 5$", errs.number)
		assert.matches("got table$", errs.table)
		assert.matches("nfq.send: a pointer needs its length: nfq.send%(ptr, len %[, opts%]%)$", errs.pointer)
		assert.matches("nfq.send: a length goes with a pointer %(cdata%), but the first argument is string", errs.length)
		assert.matches("nfq.send: the length must be an integer from 0 to 65575, got number %-1$", errs.negative)
		assert.matches("unknown nfq.send option 'mrak'$", errs.opts)
		assert.matches("nfq.send: mark must be an integer from 0 to 4294967295, got number 4294967296$", errs.mark)
		assert.matches("has no payload: the queue copies metadata only", errs.meta)
	end)

	it("checks nfq.testing's send options", function()
		local p = { trigger }
		local function run_error(opts)
			return select(2, pcall(testing.run, function() end, p, opts))
		end
		assert.matches("opts.send must be true or false, got string \"yes\"$", run_error { send = "yes" })
		assert.matches("opts.send_mark goes with opts.send = true$", run_error { send_mark = 1 })
		assert.matches("opts.send_mask must be an integer from 0 to 4294967295, got number %-1$",
			run_error { send = true, send_mask = -1 })
	end)

	-- The packet object is left unallocated when nothing reads it after a
	-- C call (see README): the verdict goes first here.
	it("allocates nothing per packet sent from a callback after its verdict, nor per pkt:reject()", function()
		local q = ffi.gc(C.nfq_queue_open_offline(C.NFQ_COPY_PACKET, 65535), C.nfq_queue_close)
		C.nfq_queue_set_sender(q, C.nfq_sender_open(1, 1, 0))
		local bytes = udp_packet("copy")
		local buf = ffi.new("uint8_t[?]", #bytes)
		ffi.copy(buf, bytes, #bytes)
		local marked = { mark = 2 }
		local queue = nfq._adopt(q, function(pkt)
			if pkt.id % 2 == 0 then
				pkt:drop()
				nfq.send(bytes)
				nfq.send(buf, #bytes, marked)
			else
				pkt:reject()
			end
		end)
		nfq._set_send_queue(queue)
		finally(function() nfq._set_send_queue(nil) end)
		local round = batch.offline_round(q, queue, bytes)
		-- Traces of earlier specs' callbacks would stand in the way (as in spec 05).
		jit.flush()
		local grown = batch.heap_growth(round, 200, 3000)
		assert.is_true(grown < 16, ("the Lua heap grew by %.1f KB over 192000 packets"):format(grown))
		assert.equal(3200 * 64 * 3 / 2, tonumber(q.stats.sent))
	end)
end)

-- A raw socket that sees every IPv4 UDP packet of this namespace, IP header
-- and all: tap:recv(timeout) gives the next one, or nil.
local function udp_tap()
	local fd = ffi.C.socket(AF_INET, SOCK_RAW, IPPROTO_UDP)
	assert(fd >= 0, "raw socket")
	local buf = ffi.new("uint8_t[65536]")
	local pfd = ffi.new("struct pollfd[1]")
	return {
		recv = function(_, timeout)
			pfd[0].fd, pfd[0].events = fd, 1
			if ffi.C.poll(pfd, 1, timeout * 1000) <= 0 then return nil end
			return ffi.string(buf, ffi.C.recv(fd, buf, 65536, 0))
		end,
		close = function() ffi.C.close(fd) end,
	}
end

describe("nfq.send #kernel", function()
	local q
	H.isolated_tests()
	after_each(function()
		if q then q:close() end
		q = nil
	end)

	it("sends IPv4 and IPv6 packets as given, with the send mark, at once outside a callback", function()
		H.sh("iptables -t mangle -A POSTROUTING -m mark --mark 0x11 -j RETURN")
		H.sh("ip6tables -t mangle -A POSTROUTING -m mark --mark 0x12 -j RETURN")
		local rx4, rx6, tap = H.udp("127.0.0.1", 7101), H.udp("::1", 7101), udp_tap()
		finally(tap.close)
		q = assert(nfq.new())
		assert(q:bind(1, function() end, { send = true, send_mark = 0x11 }))
		local v4, v6 = udp_packet("four"), udp_packet("six", { src = "::1", dst = "::1" })
		assert.is_true(nfq.send(v4))
		assert.is_true(q:send(v6, { mark = 0x12 }))
		assert.equal("four", rx4:recv(1))
		assert.equal("six", rx6:recv(1))
		assert.equal(v4, tap:recv(1), "the bytes as sent, checksums and id included")
		assert.equal(1, H.rule_packets("mangle", "POSTROUTING", "0x11"))
		assert.matches("^%s*1 ", H.sh("ip6tables -t mangle -L POSTROUTING -v -x -n | grep 0x12"))
		assert.same({ 2, 0 }, { q:stats().sent, q:stats().send_errors })
	end)

	it("delivers A, the original, B in that order when the script sends A, accepts, sends B, in full batches", function()
		H.sh("iptables -A OUTPUT -m mark --mark 0x1/0x1 -j RETURN")
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7101 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 7101), H.udp("127.0.0.1", 7100)
		local copies = {}
		for i = 1, 64 do
			copies[i] = { udp_packet("A" .. i), udp_packet("B" .. i) }
		end
		local seen = 0
		q = H.bound_queue(1, function(pkt)
			seen = seen + 1
			local n = tonumber(H.udp4_data(pkt:get_payload()):match("%d+"))
			assert(nfq.send(copies[n][1]))
			pkt:accept()
			assert(nfq.send(copies[n][2]))
		end, { send = true, send_mark = 1, send_mask = 1 })
		local got = {}
		for round = 1, 40 do
			for i = 1, 64 do tx:sendto("o" .. i, "127.0.0.1", 7101) end
			H.pump(q, function() return seen == round * 64 end)
			for _, d in ipairs(rx:recv_all(0.05)) do got[#got + 1] = d end
		end
		local expected = {}
		for _ = 1, 40 do
			for i = 1, 64 do
				expected[#expected + 1] = "A" .. i
				expected[#expected + 1] = "o" .. i
				expected[#expected + 1] = "B" .. i
			end
		end
		assert.equal(#expected, #got)
		assert.same(expected, got)
		assert.equal(40 * 64, q:stats().received, "with the mark rule no sent packet came back")
		assert.equal(40 * 128, q:stats().sent)
	end)

	it("sends packets that match the queue's rule back to the queue, unless the send mark rule comes first", function()
		local function run(with_rule)
			H.fresh_netns()
			if with_rule then H.sh("iptables -A OUTPUT -m mark --mark 0x1/0x1 -j RETURN") end
			H.sh("iptables -A OUTPUT -o lo -p udp --dport 7101 -j NFQUEUE --queue-num 1")
			local rx, tx = H.udp("127.0.0.1", 7101), H.udp()
			local originals, copies_seen = 0, 0
			local queue = H.bound_queue(1, function(pkt)
				local data = H.udp4_data(pkt:get_payload())
				if data:find("^copy") then
					copies_seen = copies_seen + 1
				else
					originals = originals + 1
					nfq.send(udp_packet("copy " .. data))
				end
				pkt:accept()
			end, { send = true, send_mark = 1, send_mask = 1 })
			for i = 1, 10 do tx:sendto("o" .. i, "127.0.0.1", 7101) end
			H.pump(queue, function() return originals == 10 end)
			assert.equal(20, #rx:recv_all(0.2))
			assert(queue:run(false))
			queue:close()
			return copies_seen
		end
		assert.equal(0, run(true))
		assert.equal(10, run(false), "without the rule the copies loop back to the script")
	end)

	it("returns what the kernel refuses outside a callback, and counts it inside one", function()
		H.sh("iptables -A OUTPUT -d 127.0.0.9 -j DROP")
		H.sh("ip link set lo mtu 1300")
		q = H.bound_queue(1, function() end, { send = true })
		local ok, err = nfq.send(udp_packet("x", { dst = "127.0.0.9" }))
		assert.is_nil(ok)
		assert.equal("sending a 29-byte IPv4 packet to 127.0.0.9: Operation not permitted "
			.. "(a netfilter rule on OUTPUT or POSTROUTING dropped it)", err)
		ok, err = nfq.send(udp_packet("x", { dst = "10.99.0.1" }))
		assert.is_nil(ok)
		assert.matches("to 10.99.0.1: Network is unreachable %(no route to it%)$", err)
		ok, err = nfq.send(udp_packet(("x"):rep(1400)))
		assert.is_nil(ok)
		assert.matches("^sending a 1428%-byte IPv4 packet to 127.0.0.1: Message too long %(it is larger than the MTU", err)
		assert.equal(3, q:stats().send_errors)
		-- In a batch, the packets after a refused one still go.
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7102 -j NFQUEUE --queue-num 1")
		q:close()
		local rx, tx = H.udp("127.0.0.1", 7101), H.udp()
		local done = false
		q = H.bound_queue(1, function(pkt)
			assert(nfq.send(udp_packet("x", { dst = "10.99.0.1" })))
			assert(nfq.send(udp_packet("after")))
			pkt:drop()
			done = true
		end, { send = true })
		tx:sendto("trigger", "127.0.0.1", 7102)
		H.pump(q, function() return done end)
		assert.equal("after", rx:recv(1))
		assert.same({ 1, 1 }, { q:stats().sent, q:stats().send_errors })
	end)

	it("sends nothing for bad input, and raises when sending is off", function()
		local tap = udp_tap()
		finally(tap.close)
		q = H.bound_queue(1, function() end)
		assert.matches("nfq.send: outside a callback, it sends through the queue bound with send = true, and there is none",
			send_error(udp_packet("x")))
		assert.matches("q:send: sending is off", select(2, pcall(q.send, q, udp_packet("x"))))
		q:close()
		q = H.bound_queue(1, function() end, { send = true })
		assert.is_nil((nfq.send(with_length(udp_packet("x"), 40))))
		assert.is_nil((nfq.send(udp_packet("x"):sub(1, 20))))
		assert.is_nil(tap:recv(0.2))
		assert.same({ 0, 0 }, { q:stats().sent, q:stats().send_errors })
	end)

	it("sends through the running callback's queue, or the only one bound with send = true", function()
		local a = H.bound_queue(1, function() end, { send = true })
		local b = H.bound_queue(2, function() end, { send = true })
		finally(function() a:close() b:close() end)
		assert.matches("2 queues are bound with send = true; call q:send%(%) on the one to send from",
			send_error(udp_packet("x")))
		assert.is_true(b:send(udp_packet("x")))
		b:unbind()
		assert.is_true(nfq.send(udp_packet("x")))
		assert.equal(1, tonumber(a.q.stats.sent))
		local c = assert(nfq.new())
		finally(function() c:close() end)
		assert.matches("nfq: send must be true or false, got number 1$",
			select(2, pcall(c.bind, c, 3, function() end, { send = 1 })))
		assert.matches("nfq: send_mark and send_mask go with send = true$",
			select(2, pcall(c.bind, c, 3, function() end, { send_mark = 1 })))
		assert.matches("nfq: send_mask must be an integer from 0 to 4294967295",
			select(2, pcall(c.bind, c, 3, function() end, { send = true, send_mask = 0.5 })))
	end)

	it("needs CAP_NET_RAW for send = true, and says so", function()
		local script = H.tmpfile([[
			local nfq = require "nfq"
			local q = assert(nfq.new())
			print(q:bind(1, function() end, { send = true }))
		]], ".lua")
		local out = H.sh(("cd %s && setpriv --bounding-set=-net_raw "
			.. "env LUA_PATH='lua/?.lua;;' LUA_CPATH='lua/?.so;;' luajit %s"):format(H.root, script))
		assert.equal("nil\tcannot open the raw sockets that send = true needs: Operation not permitted "
			.. "(they need root or CAP_NET_RAW)\n", out)
		assert.is_nil(H.queue_info(1), "not bound")
	end)
end)

-- A daemon script that sends A<n> and B<n> around its verdict for each
-- datagram <n>, to 127.0.0.1:7201. The IPv4 checksum is the kernel's, and
-- UDP over IPv4 may go without one.
local ORDER_SCRIPT = [[
local nfq = require "nfq"
local function u16(n) return string.char(math.floor(n / 256), n % 256) end
local function udp(data)
	return "\69\0" .. u16(28 + #data) .. "\0\0\0\0\64\17\0\0\127\0\0\1\127\0\0\1"
		.. u16(7200) .. u16(7201) .. u16(8 + #data) .. "\0\0" .. data
end
return function(pkt)
	local n = pkt:get_payload():sub(29)
	assert(nfq.send(udp("A" .. n)))
	pkt:accept()
	assert(nfq.send(udp("B" .. n)))
end
]]

-- Receive on 127.0.0.1:7201 until a second passes without a datagram; one line each.
local RECEIVER = [[
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE
s.bind(("127.0.0.1", 7201))
open(sys.argv[1] + ".ready", "w").close()
s.settimeout(5)
out = open(sys.argv[1], "w")
try:
    while True:
        out.write(s.recv(100).decode() + "\n")
        s.settimeout(1)
except socket.timeout:
    pass
out.close()
open(sys.argv[1] + ".done", "w").close()
]]

describe("nfqlua --send #kernel", function()
	H.isolated_tests()

	local function script(text)
		local path = H.tmpfile(text, ".lua")
		H.sh("chmod 644 " .. path)
		return path
	end

	it("sends A, the original, B in that order for every datagram of a flood", function()
		H.sh("iptables -A OUTPUT -m mark --mark 0x1/0x1 -j RETURN")
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7201 -j NFQUEUE --queue-num 1")
		local d = H.daemon(script(ORDER_SCRIPT) .. " --queue 1 --send --send-mark 0x1/0x1")
		d:wait_output("sending is on (--send): sent packets leave with mark 0x1/0x1")
		H.wait_queue_ready(1)
		local got = H.tmpfile("")
		os.execute(("python3 %s %s > %s.log 2>&1 &"):format(H.tmpfile(RECEIVER, ".py"), got, got))
		H.wait_for(function() return H.read_file(got .. ".ready") end, 5, "the receiver")
		local n = 3000
		H.sh(("python3 -c 'import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
			.. "for i in range(%d): s.sendto(b\"%%d\" %% i, (\"127.0.0.1\", 7201))'"):format(n))
		H.wait_for(function() return H.read_file(got .. ".done") end, 30, "the receiver to finish")
		local lines, bad = {}, nil
		for line in H.read_file(got):gmatch("[^\n]+") do lines[#lines + 1] = line end
		assert.equal(3 * n, #lines)
		for i = 0, n - 1 do
			local want = { "A" .. i, tostring(i), "B" .. i }
			for k = 1, 3 do
				if not bad and lines[3 * i + k] ~= want[k] then
					bad = ("datagram %d: %s where %s was due"):format(3 * i + k, lines[3 * i + k], want[k])
				end
			end
		end
		assert.is_nil(bad)
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.matches(("received=%d accepted=%d .- sent=%d send_errors=0 "):format(n, n, 2 * n), d:output())
	end)

	it("with --user keeps CAP_NET_ADMIN only, and still sends", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7202 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 7201), H.udp()
		local dir = H.sh("mktemp -d"):gsub("%s+$", "")
		finally(function() os.execute("rm -rf " .. dir) end)
		local f = assert(io.open(dir .. "/order.lua", "w"))
		f:write(ORDER_SCRIPT)
		f:close()
		H.sh("chmod 755 " .. dir .. " && chmod 644 " .. dir .. "/order.lua")
		local d = H.daemon(dir .. "/order.lua --queue 1 --user nobody --send")
		d:wait_output("bound")
		H.wait_queue_ready(1)
		assert.matches("running as user nobody", d:output(), 1, true)
		for task in H.sh("ls /proc/" .. d.pid .. "/task"):gmatch("%d+") do
			local status = H.read_file(("/proc/%d/task/%s/status"):format(d.pid, task))
			for _, set in ipairs { "CapEff", "CapPrm", "CapBnd" } do
				assert.equal(0x1000, tonumber(status:match(set .. ":%s*(%x+)"), 16), set .. " of task " .. task)
			end
		end
		tx:sendto("7", "127.0.0.1", 7202)
		assert.same({ "A7", "B7" }, rx:recv_all(0.5))
	end)

	it("refuses what does not go together, and says why sending is off or cannot start", function()
		local s = script(ORDER_SCRIPT)
		local rc, out = H.run_nfqlua(s .. " --queue 1 --send-mark 0x1/0x1")
		assert.same({ 2, "nfqlua: --send-mark goes with --send: add --send, or leave --send-mark out (see nfqlua --help)\n" },
			{ rc, out })
		rc, out = H.run_nfqlua(s .. " --queue 1 --send --send-mark 1/x")
		assert.same({ 2, "nfqlua: --send-mark must be MARK or MARK/MASK, numbers from 0 to 0xffffffff, got '1/x' "
			.. "(see nfqlua --help)\n" }, { rc, out })
		rc, out = H.run_nfqlua(s .. " --check --send")
		assert.same({ 2, "nfqlua: --send has no effect with --check: leave it out (see nfqlua --help)\n" }, { rc, out })
		rc, out = H.run_nfqlua(s .. " --queue 1 --send", "setpriv --bounding-set=-net_raw ")
		assert.same({ 1, "nfqlua: --send: cannot open the raw sockets for sending: Operation not permitted "
			.. "(they need root or CAP_NET_RAW)\n" }, { rc, out })
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7203 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 7203), H.udp()
		local d = H.daemon(s .. " --queue 1")
		H.wait_queue_ready(1)
		tx:sendto("1", "127.0.0.1", 7203)
		assert.equal("1", rx:recv(1), "the script's error gives the fallback verdict")
		d:wait_output("nfq.send: sending is off: run nfqlua with --send")
	end)

	it("logs what the kernel refuses to send from a callback, and counts it", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7204 -j NFQUEUE --queue-num 1")
		local tx = H.udp()
		local d = H.daemon(script([[
			local nfq = require "nfq"
			return function(pkt)
				local bytes = pkt:get_payload()
				pkt:accept()
				-- 10.99.0.1 has no route in this namespace.
				assert(nfq.send(bytes:sub(1, 16) .. "\10\99\0\1" .. bytes:sub(21)))
			end
		]]) .. " --queue 1 --send")
		H.wait_queue_ready(1)
		tx:sendto("x", "127.0.0.1", 7204)
		d:wait_output("queue 1: 1 sent packet refused, the last: sending a 29-byte IPv4 packet to 10.99.0.1: "
			.. "Network is unreachable (no route to it)")
		d:signal("USR1")
		d:wait_output("sent=0 send_errors=1 ")
	end)
end)

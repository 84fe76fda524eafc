-- The library API against the real kernel: each test runs in a fresh
-- network namespace with its own NFQUEUE rules. First, the C core's queue
-- without a kernel: the copy range it keeps, and what it gives back when an
-- allocation fails (a small C program built here, with calloc wrapped, under
-- AddressSanitizer's leak check).
local nfq = require "nfq"
local H = require "helpers.net"
local ffi = require "ffi"
local C = nfq._C

local pump, bound_queue = H.pump, H.bound_queue

local function offline(mode, range)
	return ffi.gc(C.nfq_queue_open_offline(mode, range), C.nfq_queue_close)
end

describe("queue without a kernel", function()
	it("copies at most NFQ_MAX_COPY_RANGE bytes offline, as the kernel does, and says so in range", function()
		assert.equal(65531, C.NFQ_MAX_COPY_RANGE)
		local q = offline(C.NFQ_COPY_PACKET, 65535)
		assert.equal(65531, q.range)
		local data = string.rep("x", 65535)
		assert.equal(0, C.nfq_queue_offline_push(q, ffi.new("struct nfq_packet"), data, #data))
		assert.equal(65531, q.pkts[0].payload_len)
		assert.equal(65535, q.pkts[0].cap_len)
		assert.equal(100, offline(C.NFQ_COPY_PACKET, 100).range)
		assert.equal(0, offline(C.NFQ_COPY_META, 65535).range, "COPY_META copies nothing")
		assert.is_true(C.nfq_queue_open_offline(C.NFQ_COPY_PACKET, 65536) == nil)
	end)

	it("frees its receive buffer when the slot array cannot be allocated", function()
		local dir = H.root
		local src = H.tmpfile([[
#include <stdio.h>
#include <stdlib.h>
#include "nfq_internal.h"

void *__real_calloc(size_t n, size_t size);
static int fail_slots;

/* Refuse the batch's slot array, nothing else. */
void *__wrap_calloc(size_t n, size_t size)
{
	if (fail_slots && n == NFQ_BATCH_SLOTS && size == sizeof(struct nfq_packet))
		return NULL;
	return __real_calloc(n, size);
}

int main(void)
{
	fail_slots = 1;
	struct nfq_queue *q = nfq_queue_open_offline(NFQ_COPY_PACKET, 65535);
	fail_slots = 0;
	if (q) {
		puts("opened although the slots could not be allocated");
		return 1;
	}
	puts("refused");
	return 0;
}
]], ".c")
		local bin = src .. ".bin"
		H.sh(("cd %s && cc -g -fsanitize=address -Isrc -o %s %s src/nfq_queue.c src/nfq_packet.c src/nfq_headers.c "
			.. "src/nfq_send.c -Wl,--wrap=calloc $(pkg-config --libs libmnl libnetfilter_queue) -lpthread")
			:format(dir, bin, src))
		local f = io.popen("ASAN_OPTIONS=detect_leaks=1 " .. bin .. " 2>&1; echo rc=$?")
		local out = f:read("*a")
		f:close()
		assert.matches("^refused\nrc=0\n$", out)
	end)
end)

describe("queue #kernel", function()
	local q
	before_each(function()
		H.fresh_netns()
	end)
	after_each(function()
		if q then q:close() end
		q = nil
	end)

	it("accepts and drops by content", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5001 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 5001), H.udp()
		local seen = 0
		q = bound_queue(1, function(pkt)
			seen = seen + 1
			if H.udp4_data(pkt:get_payload()):find("bad") then pkt:drop() else pkt:accept() end
		end)
		for _, m in ipairs { "good1", "bad1", "good2", "bad2" } do
			tx:sendto(m, "127.0.0.1", 5001)
		end
		pump(q, function() return seen == 4 end)
		assert.same({ "good1", "good2" }, rx:recv_all(0.3))
		local st = q:stats()
		assert.equal(4, st.received)
		assert.equal(2, st.accepted)
		assert.equal(2, st.dropped)
		assert.equal(0, st.fallback)
	end)

	it("run(false, max_batches) stops after that many batches and says more may wait", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5017 -j NFQUEUE --queue-num 1")
		local tx = H.udp()
		local seen = 0
		q = bound_queue(1, function(pkt)
			seen = seen + 1
			pkt:accept()
		end)
		for i = 1, 150 do tx:sendto("datagram " .. i, "127.0.0.1", 5017) end
		H.wait_for(function() return H.queue_info(1).waiting == 150 end, 5, "150 packets to wait in the queue")
		assert.same({ true, true }, { q:run(false, 1) })
		assert.is_true(seen > 0 and seen <= 64, "one batch: " .. seen)
		local calls, more = 1, true
		while more do
			local ok
			ok, more = q:run(false, 1)
			assert.is_true(ok)
			calls = calls + 1
		end
		assert.equal(150, seen)
		assert.is_true(calls >= 3, "150 packets take at least 3 batches of 64, took " .. calls .. " calls")
		assert.equal(0, H.queue_info(1).waiting)
		assert.has_error(function() q:run(false, 0) end,
			"nfq: max_batches must be an integer from 1 to 2147483647, got number 0")
	end)

	it("run(false, max_batches) says more only while packets wait in the socket", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5018 -j NFQUEUE --queue-num 1")
		local tx = H.udp()
		local seen = 0
		q = bound_queue(1, function(pkt)
			seen = seen + 1
			pkt:accept()
		end)
		for i = 1, 10 do tx:sendto("datagram " .. i, "127.0.0.1", 5018) end
		H.wait_for(function() return H.queue_info(1).waiting == 10 end, 5, "10 packets to wait in the queue")
		-- One batch takes all ten: the batch limit is reached, but nothing waits.
		assert.same({ true, false }, { q:run(false, 1) })
		assert.equal(10, seen)
	end)

	it("rewrites a payload with new lengths and checksums, as the peer receives it", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5002 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 5002), H.udp()
		local new_data = "rewritten, and longer than the original"
		local after_set
		q = bound_queue(1, function(pkt)
			local rewritten = H.rewrite_udp4(pkt:get_payload(), new_data)
			pkt:set_payload(rewritten)
			after_set = pkt:get_payload() == rewritten and pkt:get_payload_len() == #rewritten
			pkt:accept()
		end)
		tx:sendto("short", "127.0.0.1", 5002)
		pump(q, function() return after_set ~= nil end)
		assert.is_true(after_set)
		assert.equal(new_data, rx:recv(1))
	end)

	it("reorders: holds one packet and accepts it after the next", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5003 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 5003), H.udp()
		local held
		local done = false
		q = bound_queue(1, function(pkt)
			if not held then
				held = pkt:retain()
			else
				pkt:accept()
				held:accept()
				done = true
			end
		end)
		tx:sendto("one", "127.0.0.1", 5003)
		tx:sendto("two", "127.0.0.1", 5003)
		pump(q, function() return done end)
		assert.same({ "two", "one" }, rx:recv_all(0.3))
	end)

	it("sets a mark that a -m mark rule counts", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5004 -j NFQUEUE --queue-num 1")
		H.sh("iptables -t mangle -A POSTROUTING -o lo -m mark --mark 0xc0ffee01 -j RETURN")
		local rx, tx = H.udp("127.0.0.1", 5004), H.udp()
		local marks = {}
		q = bound_queue(1, function(pkt)
			pkt:set_mark(0xc0ffee01)
			marks[#marks + 1] = { pkt:get_mark(), pkt.mark }
			pkt:accept()
		end)
		for i = 1, 3 do tx:sendto("m" .. i, "127.0.0.1", 5004) end
		pump(q, function() return #marks == 3 end)
		assert.equal(3, #rx:recv_all(0.3))
		assert.same({ 0xc0ffee01, 0 }, marks[1])
		assert.equal(3, H.rule_packets("mangle", "POSTROUTING", "0xc0ffee01"))
	end)

	it("repeats a packet through its hook, keeping the new mark", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5005 -m mark ! --mark 7 -j NFQUEUE --queue-num 1")
		H.sh("iptables -t mangle -A POSTROUTING -o lo -m mark --mark 7 -j RETURN")
		local rx, tx = H.udp("127.0.0.1", 5005), H.udp()
		local calls = 0
		q = bound_queue(1, function(pkt)
			calls = calls + 1
			pkt:set_mark(7)
			if calls == 1 then pkt["repeat"](pkt) else pkt:rerun() end
		end)
		tx:sendto("again", "127.0.0.1", 5005)
		tx:sendto("alias", "127.0.0.1", 5005)
		pump(q, function() return calls == 2 end)
		assert.same({ "again", "alias" }, rx:recv_all(0.3))
		assert.equal(2, calls)
		assert.equal(2, q:stats().repeated)
		assert.equal(2, H.rule_packets("mangle", "POSTROUTING", "mark match 0x7"))
	end)

	it("in COPY_META mode gives metadata and no payload", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5006 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 5006), H.udp()
		local len, err, lengths
		q = bound_queue(1, function(pkt)
			len = pkt:get_payload_len()
			lengths = { pkt.cap_len, pkt.truncated }
			local ok, e = pcall(pkt.get_payload, pkt)
			err = not ok and e
			pkt:accept()
		end, { mode = nfq.COPY_META })
		assert.equal(1, H.queue_info(1).copy_mode)
		tx:sendto("meta only", "127.0.0.1", 5006)
		pump(q, function() return len ~= nil end)
		assert.equal(0, len)
		assert.same({ 0, false }, lengths, "the kernel sends no length in COPY_META (as the README says)")
		assert.matches("no payload", err)
		assert.equal("meta only", rx:recv(1))
	end)

	it("truncates the copy to range while the delivered packet stays whole", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5007 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 5007), H.udp()
		local copy, lengths
		q = bound_queue(1, function(pkt)
			copy = pkt:get_payload()
			lengths = { pkt:get_payload_len(), pkt.cap_len, pkt.truncated }
		end, { range = 20 })
		local data = string.rep("x", 300)
		tx:sendto(data, "127.0.0.1", 5007)
		pump(q, function() return copy ~= nil end)
		assert.equal(20, #copy)
		assert.same({ 20, 328, true }, lengths, "a small range still gives the packet's length")
		assert.equal(0x45, copy:byte(1))
		assert.equal(data, rx:recv(1))
	end)

	it("keeps the range the kernel copies: at most 65531 bytes, so a 64 KiB datagram arrives truncated", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5020 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 5020), H.udp()
		local seen
		q = bound_queue(1, function(pkt)
			seen = { pkt:get_payload_len(), pkt.cap_len, pkt.truncated }
		end, { range = 65535 })
		assert.equal(65531, q.q.range)
		assert.equal(65531, H.queue_info(1).copy_range)
		local data = string.rep("g", 65507)
		tx:sendto(data, "127.0.0.1", 5020)
		pump(q, function() return seen end)
		assert.same({ 65531, 65535, true }, seen)
		assert.equal(data, rx:recv(1))
		q:close()
		q = bound_queue(1, function() end, { range = 300 })
		assert.equal(300, q.q.range)
		q:close()
		q = bound_queue(1, function() end, { mode = nfq.COPY_META })
		assert.equal(0, q.q.range, "COPY_META copies nothing")
		assert.equal(0, H.queue_info(1).copy_range)
	end)

	it("gives the receive time on input, and 0.0 on output", function()
		H.sh("iptables -A INPUT -i lo -p udp --dport 5008 -j NFQUEUE --queue-num 1")
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5018 -j NFQUEUE --queue-num 1")
		local rx_in, rx_out, tx = H.udp("127.0.0.1", 5008), H.udp("127.0.0.1", 5018), H.udp()
		local stamps = {}
		q = bound_queue(1, function(pkt)
			stamps[pkt.hook] = pkt:get_timestamp()
		end)
		-- The kernel turns timestamps on in a deferred work item after the
		-- first socket asks: wait until input packets carry one.
		H.wait_for(function()
			stamps[1] = nil
			tx:sendto("warm-up", "127.0.0.1", 5008)
			pump(q, function() return stamps[1] end)
			assert.equal("warm-up", rx_in:recv(1))
			return stamps[1] ~= 0
		end, 5, "input packets to carry a timestamp")
		stamps = {}
		local before = os.time()
		tx:sendto("in", "127.0.0.1", 5008)
		tx:sendto("out", "127.0.0.1", 5018)
		pump(q, function() return stamps[1] and stamps[3] end)
		assert.is_true(math.abs(stamps[1] - before) < 3, "input timestamp " .. stamps[1] .. " vs " .. before)
		assert.is_true(stamps[1] ~= math.floor(stamps[1]), "microseconds are kept")
		assert.equal(0.0, stamps[3])
		assert.equal("in", rx_in:recv(1))
		assert.equal("out", rx_out:recv(1))
	end)

	it("asks the kernel for timestamps only once a packet the host received arrives", function()
		-- Stamping costs every packet on the host; output packets never have a
		-- receive time, so a queue that sees only those must not ask.
		if not pcall(function() return ffi.C.getsockopt end) then
			ffi.cdef "int getsockopt(int fd, int level, int name, void *val, unsigned *len);"
		end
		local SOL_SOCKET, SO_TIMESTAMP = 1, 29
		local function asked()
			local value, len = ffi.new("int[1]"), ffi.new("unsigned[1]", 4)
			assert(ffi.C.getsockopt(q:get_fd(), SOL_SOCKET, SO_TIMESTAMP, value, len) == 0)
			return value[0] ~= 0
		end
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5019 -j NFQUEUE --queue-num 1")
		H.sh("iptables -A INPUT -i lo -p udp --dport 5009 -j NFQUEUE --queue-num 1")
		local rx_out, rx_in, tx = H.udp("127.0.0.1", 5019), H.udp("127.0.0.1", 5009), H.udp()
		local seen = 0
		q = bound_queue(1, function() seen = seen + 1 end)
		for i = 1, 3 do tx:sendto("out" .. i, "127.0.0.1", 5019) end
		pump(q, function() return seen == 3 end)
		assert.same({ "out1", "out2", "out3" }, rx_out:recv_all(0.2))
		assert.is_false(asked())
		tx:sendto("in", "127.0.0.1", 5009)
		pump(q, function() return seen == 4 end)
		assert.equal("in", rx_in:recv(1))
		assert.is_true(asked())
	end)

	it("raises after the callback unless the packet was retained", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5010 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 5010), H.udp()
		local plain, kept
		q = bound_queue(1, function(pkt)
			if not plain then plain = pkt else kept = pkt:retain() end
		end)
		tx:sendto("plain", "127.0.0.1", 5010)
		tx:sendto("kept", "127.0.0.1", 5010)
		pump(q, function() return kept ~= nil end)
		local ok, err = pcall(plain.get_payload, plain)
		assert.is_false(ok)
		assert.matches("retain", err)
		assert.has_error(function() plain:accept() end)
		assert.matches("callback returned", tostring(select(2, pcall(plain.drop, plain))))
		assert.equal("packet (gone)", tostring(plain))
		assert.has_error(function() return plain.id end,
			"nfq: this packet is gone: its callback returned, so it got its verdict; "
			.. "call pkt:retain() inside the callback to keep it")
		assert.equal("kept", H.udp4_data(kept:get_payload()))
		assert.equal("plain", rx:recv(1))
		assert.is_nil(rx:recv(0.2))
		kept:accept()
		assert.equal("kept", rx:recv(1))
		assert.equal("kept", H.udp4_data(kept:get_payload()), "still readable after its verdict")
	end)

	it("refuses a second verdict", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5011 -j NFQUEUE --queue-num 1")
		local tx = H.udp()
		local err
		q = bound_queue(1, function(pkt)
			pkt:accept()
			err = select(2, pcall(pkt.drop, pkt))
		end)
		tx:sendto("x", "127.0.0.1", 5011)
		pump(q, function() return err ~= nil end)
		assert.matches("already has a verdict", err)
		assert.equal(1, q:stats().accepted)
		assert.equal(0, q:stats().dropped)
	end)

	it("propagates a callback error after the fallback verdict, and goes on", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5012 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 5012), H.udp()
		local seen = {}
		q = bound_queue(1, function(pkt)
			local data = H.udp4_data(pkt:get_payload())
			seen[#seen + 1] = data
			if data == "boom" then error("script broke on " .. data) end
			pkt:accept()
		end, { fallback = "drop" })
		tx:sendto("before", "127.0.0.1", 5012)
		tx:sendto("boom", "127.0.0.1", 5012)
		tx:sendto("after", "127.0.0.1", 5012)
		local errors = {}
		H.wait_for(function()
			local ok, err = pcall(q.run, q, false)
			if not ok then errors[#errors + 1] = err end
			return #seen == 3
		end)
		assert.equal(1, #errors)
		assert.matches("script broke on boom", errors[1])
		assert.same({ "before", "after" }, rx:recv_all(0.3))
		local st = q:stats()
		assert.equal(1, st.fallback)
		assert.equal(1, st.dropped)
		assert.equal(1, st.script_errors)
	end)

	it("names the queue when another socket holds it", function()
		q = bound_queue(3, function() end)
		local other = assert(nfq.new())
		local ok, err = other:bind(3, function() end)
		assert.is_nil(ok)
		assert.matches("queue 3 is already bound", err)
		other:close()
	end)

	-- More packets than a batch holds can reach the socket before the bind's
	-- ack (a flood while binding). To have them there for sure, a second
	-- netlink socket puts 100 packet messages for queue 1 in the queue's
	-- socket first: the kernel really binds, its ack comes after them.
	it("is bound when more packets than a batch holds arrive before the bind's ack", function()
		if not pcall(ffi.typeof, "struct nfq_test_sockaddr_nl") then
			ffi.cdef [[
			struct nfq_test_sockaddr_nl { uint16_t family; uint16_t pad; uint32_t pid; uint32_t groups; };
			int getsockname(int fd, void *addr, unsigned *len);
			]]
		end
		local function le16(n) return string.char(n % 256, math.floor(n / 256) % 256) end
		local function le32(n) return le16(n % 65536) .. le16(math.floor(n / 65536)) end
		local function be16(n) return string.char(math.floor(n / 256) % 256, n % 256) end
		local function be32(n) return be16(math.floor(n / 65536)) .. be16(n % 65536) end
		local function attr(type, data)
			return le16(4 + #data) .. le16(type) .. data .. string.rep("\0", -#data % 4)
		end
		q = assert(nfq.new())
		local sa = ffi.new("struct nfq_test_sockaddr_nl")
		assert.equal(0, ffi.C.getsockname(q:get_fd(), sa, ffi.new("unsigned[1]", ffi.sizeof(sa))))
		local forger = ffi.C.socket(16, 3, 12) -- AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER
		assert.is_true(forger >= 0)
		local ip = "\x45\0\0\33\0\1\0\0\64\17\0\0\127\0\0\1\127\0\0\1" .. be16(1) .. be16(2) .. be16(13) .. "\0\0forge"
		for id = 1, 100 do
			local body = "\2\0" .. be16(1) -- nfgenmsg: AF_INET, version 0, queue 1
				.. attr(1, be32(id) .. be16(0x0800) .. "\3") -- NFQA_PACKET_HDR: id, protocol, hook
				.. attr(10, ip) -- NFQA_PAYLOAD
			local msg = le32(16 + #body) .. le16(3 * 256) .. le16(0) .. le32(0) .. le32(0) .. body
			assert.equal(#msg, ffi.C.sendto(forger, msg, #msg, 0, sa, ffi.sizeof(sa)))
		end
		ffi.C.close(forger)
		local forged, seen = 0, {}
		assert.same({ true }, { q:bind(1, function(pkt)
			local data = H.udp4_data(pkt:get_payload())
			if data == "forge" then forged = forged + 1 else seen[#seen + 1] = data end
			pkt:accept()
		end) })
		assert.equal(sa.pid, H.queue_info(1).portid)
		pump(q, function() return forged == 100 end)
		-- and real packets flow
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5021 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 5021), H.udp()
		tx:sendto("real", "127.0.0.1", 5021)
		pump(q, function() return #seen == 1 end)
		assert.same({ "real" }, seen)
		assert.equal("real", rx:recv(1))
	end)

	it("raises when binding an object that is already bound", function()
		q = bound_queue(4, function() end)
		assert.has_error(function() q:bind(5, function() end) end,
			"nfq: this queue object is already bound to queue 4; unbind it first")
	end)

	it("binds in another namespace through a socket made there", function()
		local here = ffi.C.open("/proc/self/ns/net", 0)
		assert.is_true(here >= 0)
		H.fresh_netns()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5013 -j NFQUEUE --queue-num 7")
		local fd = ffi.C.socket(16, 3, 12) -- AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER
		local rx, tx = H.udp("127.0.0.1", 5013), H.udp()
		assert.equal(0, ffi.C.setns(here, 0x40000000))
		ffi.C.close(here)
		local got
		q = assert(nfq.new { sockfd = fd })
		assert(q:bind(7, function(pkt) got = H.udp4_data(pkt:get_payload()) end))
		assert.is_nil(H.queue_info(7), "the queue lives in the other namespace")
		tx:sendto("over there", "127.0.0.1", 5013)
		pump(q, function() return got end)
		assert.equal("over there", got)
		assert.equal("over there", rx:recv(1))
		q:close()
		q = nil
		ffi.C.close(fd)
	end)

	it("handles IPv6", function()
		H.sh("ip6tables -A OUTPUT -o lo -p udp --dport 5014 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("::1", 5014), H.udp("::1")
		local desc, proto
		q = bound_queue(1, function(pkt)
			desc, proto = tostring(pkt), pkt.hw_protocol
		end)
		tx:sendto("six", "::1", 5014)
		pump(q, function() return desc end)
		assert.equal("UDP packet, 51 bytes", desc)
		assert.equal(0x86dd, proto)
		assert.equal("six", rx:recv(1))
	end)

	it("sees and rewrites 9000-byte packets whole", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5015 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 5015), H.udp()
		local len
		local replacement = string.rep("R", 9000)
		q = bound_queue(1, function(pkt)
			len = pkt:get_payload_len()
			pkt:set_payload(H.rewrite_udp4(pkt:get_payload(), replacement))
			pkt:accept()
		end)
		tx:sendto(string.rep("o", 9000), "127.0.0.1", 5015)
		pump(q, function() return len end)
		assert.equal(9028, len)
		assert.equal(replacement, rx:recv(1))
	end)

	-- Over a 1280-byte MTU the sender fragments 3000-byte datagrams, and the
	-- queue sees each fragment (no conntrack here reassembles them first):
	-- IPv6 on INPUT, IPv4 on PREROUTING (IPv4 reassembles before INPUT).
	-- The first one holds the UDP header of the whole datagram: an identity
	-- rewrite must leave its length and checksum alone.
	it("leaves fragmented UDP datagrams intact through an identity rewrite with fix_checksums", function()
		H.sh("ip link set lo mtu 1280")
		H.sh("iptables -t mangle -A PREROUTING -i lo -j NFQUEUE --queue-num 1")
		H.sh("ip6tables -A INPUT -i lo -j NFQUEUE --queue-num 1")
		local fragments = { [4] = 0, [6] = 0 }
		q = bound_queue(1, function(pkt)
			local ip, ip6 = pkt:ip(), pkt:ip6()
			if ip and (ip.more_fragments or ip.fragment_offset > 0) then
				fragments[4] = fragments[4] + 1
			elseif ip6 and ip6.next_header == 44 then
				fragments[6] = fragments[6] + 1
			end
			pkt:set_payload(pkt:get_payload())
			pkt:fix_checksums()
			pkt:accept()
		end)
		for _, addr in ipairs { "127.0.0.1", "::1" } do
			local rx, tx = H.udp(addr, 5019), H.udp(addr)
			local sent = {}
			for i = 1, 3 do
				sent[i] = ("%d:"):format(i) .. string.rep(string.char(64 + i), 2998)
				tx:sendto(sent[i], addr, 5019)
			end
			local got = {}
			pump(q, function()
				local d = rx:recv(0)
				if d then got[#got + 1] = d end
				return #got == 3
			end)
			for i = 1, 3 do
				assert.is_true(got[i] == sent[i], ("datagram %d over %s arrived as %d bytes %s, sent %d"):format(
					i, addr, #got[i], got[i]:sub(1, 3), #sent[i]))
			end
		end
		assert.equal(9, fragments[4], "IPv4 fragments queued")
		assert.equal(9, fragments[6], "IPv6 fragments queued")
	end)

	it("gives held packets the fallback verdict at unbind, and refuses verdicts after", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5016 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 5016), H.udp()
		local held
		q = bound_queue(1, function(pkt) held = pkt:retain() end)
		tx:sendto("held", "127.0.0.1", 5016)
		pump(q, function() return held end)
		assert.is_nil(rx:recv(0.2))
		assert.is_true(q:unbind())
		assert.is_true(q:unbind())
		assert.equal("held", rx:recv(1))
		local ok, err = pcall(held.accept, held)
		assert.is_false(ok)
		assert.matches("unbound or closed", err)
		assert.equal(1, q:stats().fallback)
	end)

	it("gives a collected retained packet the fallback verdict", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5017 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 5017), H.udp()
		local seen = false
		q = bound_queue(1, function(pkt)
			pkt:retain()
			seen = true
		end, { fallback = "accept" })
		tx:sendto("forgotten", "127.0.0.1", 5017)
		pump(q, function() return seen end)
		assert.is_nil(rx:recv(0.2))
		collectgarbage()
		collectgarbage()
		assert.equal("forgotten", rx:recv(1))
		assert.equal(1, q:stats().fallback)
	end)

	it("drops packets left without a verdict when the fallback is drop", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5019 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 5019), H.udp()
		local seen = 0
		q = bound_queue(1, function() seen = seen + 1 end, { fallback = "drop" })
		tx:sendto("ignored", "127.0.0.1", 5019)
		pump(q, function() return seen == 1 end)
		assert.is_nil(rx:recv(0.3))
		assert.equal(1, q:stats().fallback)
	end)

	it("reports the source hardware address and hook over veth, and none on output", function()
		local peer = "nfqpeer" .. ffi.C.getpid()
		finally(function() os.execute("ip netns del " .. peer .. " 2>/dev/null") end)
		H.sh("ip netns add " .. peer)
		H.sh("ip link add nfqv0 type veth peer name nfqv1 netns " .. peer)
		H.sh("ip addr add 169.254.77.1/24 dev nfqv0 && ip link set nfqv0 up")
		H.sh(("ip netns exec %s sh -c 'ip addr add 169.254.77.2/24 dev nfqv1 && ip link set nfqv1 up && ip link set lo up'")
			:format(peer))
		local peer_mac = H.sh(("ip netns exec %s cat /sys/class/net/nfqv1/address"):format(peer)):gsub("%s+", "")
		H.sh("iptables -A INPUT -i nfqv0 -p udp --dport 5020 -j NFQUEUE --queue-num 1")
		H.sh("iptables -A OUTPUT -o nfqv0 -p udp --dport 5021 -j NFQUEUE --queue-num 1")
		local rx = H.udp("169.254.77.1", 5020)
		local tx = H.udp()
		local seen = {}
		q = bound_queue(1, function(pkt)
			local hw = pkt:get_hw()
			seen[pkt.hook] = hw and hw:gsub(".", function(c) return ("%02x:"):format(c:byte()) end):sub(1, -2) or false
		end)
		H.sh(("ip netns exec %s bash -c 'echo from-peer > /dev/udp/169.254.77.1/5020'"):format(peer))
		tx:sendto("to-peer", "169.254.77.2", 5021)
		pump(q, function() return seen[1] ~= nil and seen[3] ~= nil end)
		assert.equal(peer_mac, seen[1])
		assert.is_false(seen[3])
		assert.equal("from-peer\n", rx:recv(1))
	end)

	it("gives a zero-copy view that dies with the callback", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5022 -j NFQUEUE --queue-num 1")
		local tx = H.udp()
		local first_byte, len, pkt_kept
		q = bound_queue(1, function(pkt)
			local ptr
			ptr, len = pkt:view()
			first_byte = ptr[0]
			assert.equal(pkt:get_payload(), ffi.string(ptr, len))
			pkt_kept = pkt
		end)
		tx:sendto("viewed", "127.0.0.1", 5022)
		pump(q, function() return len end)
		assert.equal(34, len)
		assert.equal(0x45, first_byte)
		assert.has_error(function() pkt_kept:view() end)
	end)

	it("survives and counts receive overruns (ENOBUFS)", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 5023 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 5023), H.udp()
		local big = ffi.new("int[1]", 8 * 1024 * 1024)
		ffi.C.setsockopt(tx.fd, 1, 32, big, 4) -- SO_SNDBUFFORCE: many packets in flight
		local seen = 0
		q = bound_queue(1, function() seen = seen + 1 end, { sock_len = 4096 })
		for i = 1, 400 do tx:sendto("flood " .. i, "127.0.0.1", 5023) end
		H.wait_for(function() return H.queue_info(1).user_dropped > 0 end, 5, "the socket to overflow")
		pump(q, function() return q:stats().enobufs > 0 and q.q.count == 0 end)
		local before = seen
		rx:recv_all(0.2)
		tx:sendto("after the storm", "127.0.0.1", 5023)
		pump(q, function() return seen > before end)
		assert.equal("after the storm", rx:recv(1))
		assert.is_true(q:stats().enobufs >= 1)
	end)

	describe("called from inside its own callback", function()
		-- Five packets wait in the queue, so that one run() takes them as one batch.
		local function five_waiting(port)
			H.sh("iptables -A OUTPUT -o lo -p udp --dport " .. port .. " -j NFQUEUE --queue-num 1")
			local rx, tx = H.udp("127.0.0.1", port), H.udp()
			return rx, function()
				for i = 1, 5 do tx:sendto("p" .. i, "127.0.0.1", port) end
				H.wait_for(function() return H.queue_info(1).waiting == 5 end, 5, "5 packets to wait in the queue")
			end
		end

		it("close() closes the queue once the batch has its verdicts: the script's, then the fallback", function()
			local rx, send = five_waiting(5024)
			local seen = {}
			q = bound_queue(1, function(pkt)
				local data = H.udp4_data(pkt:get_payload())
				seen[#seen + 1] = data
				if data == "p1" then
					pkt:accept()
				else
					q:close()
					assert.equal(data, H.udp4_data(pkt:get_payload()), "the packet is still there")
					pkt:drop()
				end
			end)
			send()
			assert.same({ true, false }, { q:run(false) })
			assert.same({ "p1", "p2" }, seen)
			assert.same({ "p1", "p3", "p4", "p5" }, rx:recv_all(0.3))
			assert.is_nil(H.queue_info(1))
			assert.has_error(function() q:get_fd() end, "nfq: this queue is closed")
		end)

		it("unbind() unbinds once the batch has its verdicts, and the queue can be bound again", function()
			local rx, send = five_waiting(5025)
			local held
			q = bound_queue(1, function(pkt)
				local data = H.udp4_data(pkt:get_payload())
				if data == "p1" then
					held = pkt:retain()
				elseif data == "p2" then
					assert.is_true(q:unbind())
					assert.has_error(function() q:bind(1, print) end,
						"nfq: bind: the queue unbinds when this callback returns; bind it again once run() has returned")
					pkt:drop()
				end
			end, { fallback = "accept" })
			send()
			assert.same({ true, false }, { q:run(false) })
			-- The held packet gets its fallback at the unbind, after the batch.
			assert.same({ "p3", "p4", "p5", "p1" }, rx:recv_all(0.3))
			assert.is_nil(H.queue_info(1))
			assert.matches("its queue was unbound or closed", select(2, pcall(held.drop, held)))
			local st = q:stats()
			assert.same({ 5, 1, 4, 4, 0 }, { st.received, st.dropped, st.accepted, st.fallback, st.verdict_errors })
			assert.is_true(q:unbind())
			local again
			assert(q:bind(1, function(pkt) again = H.udp4_data(pkt:get_payload()) pkt:accept() end))
			H.wait_queue_ready(1)
			H.udp():sendto("bound again", "127.0.0.1", 5025)
			pump(q, function() return again end)
			assert.equal("bound again", rx:recv(1))
		end)

		it("run() raises, and the packet keeps the verdict the script gives it after", function()
			local rx, send = five_waiting(5026)
			local err
			q = bound_queue(1, function(pkt)
				local data = H.udp4_data(pkt:get_payload())
				if data == "p1" then
					err = select(2, pcall(q.run, q, false))
					pkt:drop()
				elseif data == "p2" then
					q:run(false)
				else
					pkt:accept()
				end
			end, { fallback = "drop" })
			send()
			local ok, outer = pcall(q.run, q, false)
			assert.is_false(ok)
			assert.equal("nfq: run: called from inside this queue's callback, which run() is already serving; "
				.. "return from the callback and let that run() go on", err:gsub("^.-:%d+: ", ""))
			assert.matches("called from inside this queue's callback", outer)
			assert.same({ true, false }, { q:run(false) })
			assert.same({ "p3", "p4", "p5" }, rx:recv_all(0.3))
			local st = q:stats()
			assert.same({ 2, 3, 1, 1 }, { st.dropped, st.accepted, st.fallback, st.script_errors })
		end)
	end)
end)

-- Kernel metadata, queue flags and verdict variants, each on the hook where
-- the kernel supplies it, in a fresh namespace.
local nfq = require "nfq"
local H = require "helpers.net"
local ffi = require "ffi"

local pump, bound_queue = H.pump, H.bound_queue

-- Conntrack data reaches queues only with CONFIG_NETFILTER_NETLINK_GLUE_CT.
local function conntrack_queue_or_pending(num, cb)
	local q = assert(nfq.new())
	local ok, err = q:bind(num, cb, { conntrack = true })
	if not ok then
		q:close()
		assert.matches("CONFIG_NETFILTER_NETLINK_GLUE_CT", err)
		pending("this kernel cannot give conntrack data to queues: " .. err)
		return nil
	end
	H.wait_queue_ready(num)
	return q
end

describe("metadata #kernel", function()
	local q
	before_each(function() H.fresh_netns() end)
	after_each(function()
		if q then q:close() end
		q = nil
	end)

	it("gives the uid and gid of the sending socket", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7001 -j NFQUEUE --queue-num 1")
		local rx = H.udp("127.0.0.1", 7001)
		local owners = {}
		q = bound_queue(1, function(pkt)
			owners[#owners + 1] = { pkt.uid, pkt.gid }
		end, { uid_gid = true })
		H.sh("setpriv --reuid=65534 --regid=65533 --clear-groups bash -c 'echo nobody > /dev/udp/127.0.0.1/7001'")
		H.sh("bash -c 'echo root > /dev/udp/127.0.0.1/7001'")
		pump(q, function() return #owners == 2 end)
		assert.same({ 65534, 65533 }, owners[1])
		assert.same({ 0, 0 }, owners[2])
		assert.equal(2, #rx:recv_all(0.3))
	end)

	it("gives no uid without the uid_gid flag", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7002 -j NFQUEUE --queue-num 1")
		local tx = H.udp()
		local seen, uid = false, "unset"
		q = bound_queue(1, function(pkt) seen, uid = true, pkt.uid end)
		tx:sendto("x", "127.0.0.1", 7002)
		pump(q, function() return seen end)
		assert.is_nil(uid)
	end)

	it("tracks connection state from new to established, with direction", function()
		H.sh("iptables -A OUTPUT -o lo -p udp -m multiport --ports 7003 -m conntrack --ctstate NEW,ESTABLISHED "
			.. "-j NFQUEUE --queue-num 1")
		local a, b = H.udp("127.0.0.1", 7103), H.udp("127.0.0.1", 7003)
		local states = {}
		q = conntrack_queue_or_pending(1, function(pkt)
			states[#states + 1] = { pkt.ct_state, pkt.ct_reply, pkt.ct_id }
		end)
		if not q then return end
		a:sendto("request", "127.0.0.1", 7003)
		pump(q, function() return #states == 1 end)
		assert.equal("request", b:recv(1))
		b:sendto("reply", "127.0.0.1", 7103)
		pump(q, function() return #states == 2 end)
		a:sendto("again", "127.0.0.1", 7003)
		pump(q, function() return #states == 3 end)
		assert.same({ "new", false }, { states[1][1], states[1][2] })
		assert.same({ "established", true }, { states[2][1], states[2][2] })
		assert.same({ "established", false }, { states[3][1], states[3][2] })
		assert.is_number(states[1][3])
		assert.equal(states[1][3], states[3][3], "one connection, one id")
	end)

	it("sets a connmark that -m connmark matches, so later packets skip the queue", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7004 -m connmark --mark 0 -j NFQUEUE --queue-num 1")
		H.sh("iptables -t mangle -A POSTROUTING -o lo -m connmark --mark 0x55 -j RETURN")
		local rx, tx = H.udp("127.0.0.1", 7004), H.udp()
		local calls = 0
		q = conntrack_queue_or_pending(1, function(pkt)
			calls = calls + 1
			pkt:set_connmark(0x55)
			pkt:accept()
		end)
		if not q then return end
		tx:sendto("first", "127.0.0.1", 7004)
		pump(q, function() return calls == 1 end)
		tx:sendto("second", "127.0.0.1", 7004)
		tx:sendto("third", "127.0.0.1", 7004)
		assert.same({ "first", "second", "third" }, rx:recv_all(0.3))
		assert.equal(1, calls)
		assert.equal(3, H.rule_packets("mangle", "POSTROUTING", "connmark match 0x55"))
		q:run(false)
		assert.equal(1, calls)
	end)

	it("refuses set_connmark without the conntrack flag", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7005 -j NFQUEUE --queue-num 1")
		local tx = H.udp()
		local err
		q = bound_queue(1, function(pkt) err = select(2, pcall(pkt.set_connmark, pkt, 1)) end)
		tx:sendto("x", "127.0.0.1", 7005)
		pump(q, function() return err end)
		assert.matches("conntrack = true", err)
	end)

	it("names the interfaces a packet came in on and goes out of", function()
		local peer = "nfqmeta" .. ffi.C.getpid()
		finally(function() os.execute("ip netns del " .. peer .. " 2>/dev/null") end)
		H.sh("ip netns add " .. peer)
		H.sh("ip link add nfqm0 type veth peer name nfqm1 netns " .. peer)
		H.sh("ip addr add 169.254.78.1/24 dev nfqm0 && ip link set nfqm0 up")
		H.sh(("ip netns exec %s sh -c 'ip addr add 169.254.78.2/24 dev nfqm1 && ip link set nfqm1 up'"):format(peer))
		H.sh("iptables -A INPUT -i nfqm0 -p udp --dport 7006 -j NFQUEUE --queue-num 1")
		H.sh("iptables -A OUTPUT -o nfqm0 -p udp --dport 7007 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("169.254.78.1", 7006), H.udp()
		local seen = {}
		q = bound_queue(1, function(pkt)
			seen[pkt.hook] = { pkt.indev, pkt:get_indev_name(), pkt.outdev, pkt:get_outdev_name() }
		end)
		H.sh(("ip netns exec %s bash -c 'echo in > /dev/udp/169.254.78.1/7006'"):format(peer))
		tx:sendto("out", "169.254.78.2", 7007)
		pump(q, function() return seen[1] and seen[3] end)
		local index = tonumber(H.sh("ip -o link show nfqm0"):match("^(%d+):"))
		assert.same({ index, "nfqm0", 0, nil }, seen[1])
		assert.same({ 0, nil, index, "nfqm0" }, seen[3])
		assert.equal("in\n", rx:recv(1))
	end)

	it("reports the original length of a packet cut by range", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7008 -j NFQUEUE --queue-num 1")
		local tx = H.udp()
		local seen = {}
		q = bound_queue(1, function(pkt)
			seen[#seen + 1] = { pkt.cap_len, pkt.truncated, pkt:get_payload_len() }
		end, { range = 40 })
		tx:sendto(string.rep("z", 300), "127.0.0.1", 7008)
		tx:sendto("tiny", "127.0.0.1", 7008)
		pump(q, function() return #seen == 2 end)
		assert.same({ 328, true, 40 }, seen[1])
		assert.same({ 32, false, 32 }, seen[2])
	end)

	it("fails open: a full queue accepts instead of dropping", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7009 -j NFQUEUE --queue-num 1")
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7010 -j NFQUEUE --queue-num 2")
		local rx_open, rx_closed, tx = H.udp("127.0.0.1", 7009), H.udp("127.0.0.1", 7010), H.udp()
		q = bound_queue(1, function(pkt) pkt:accept() end, { max_len = 2, fail_open = true })
		local closed = bound_queue(2, function(pkt) pkt:accept() end, { max_len = 2 })
		finally(function() closed:close() end)
		for i = 1, 10 do
			tx:sendto("open " .. i, "127.0.0.1", 7009)
			tx:sendto("closed " .. i, "127.0.0.1", 7010)
		end
		-- Neither consumer has run yet: only fail-open lets packets past the full queue.
		assert.equal(8, #rx_open:recv_all(0.3))
		assert.equal(0, #rx_closed:recv_all(0.1))
		assert.equal(8, H.queue_info(2).queue_dropped)
		pump(q, function() return q:stats().accepted == 2 end)
		pump(closed, function() return closed:stats().accepted == 2 end)
		assert.equal(2, #rx_open:recv_all(0.3))
		assert.equal(2, #rx_closed:recv_all(0.3))
	end)

	it("sees a GSO send whole with gso on, and as segments with it off", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7011 -j NFQUEUE --queue-num 1")
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7012 -j NFQUEUE --queue-num 2")
		local rx1, rx2, tx = H.udp("127.0.0.1", 7011), H.udp("127.0.0.1", 7012), H.udp()
		tx:set_gso(1000)
		local whole, segments = {}, {}
		q = bound_queue(1, function(pkt) whole[#whole + 1] = { pkt:get_payload_len(), pkt.gso } end)
		local seg = bound_queue(2, function(pkt) segments[#segments + 1] = pkt:get_payload_len() end, { gso = false })
		finally(function() seg:close() end)
		tx:sendto(string.rep("g", 10000), "127.0.0.1", 7011)
		tx:sendto(string.rep("s", 10000), "127.0.0.1", 7012)
		pump(q, function() return #whole == 1 end)
		pump(seg, function() return #segments == 10 end)
		assert.same({ 10028, true }, whole[1])
		assert.equal(1028, segments[1])
		assert.equal(10, #rx1:recv_all(0.3))
		assert.equal(10, #rx2:recv_all(0.3))
	end)

	it("sends a packet on to another queue", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7013 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 7013), H.udp()
		local first, second
		q = bound_queue(1, function(pkt) first = true pkt:queue(2) end)
		local q2 = bound_queue(2, function(pkt) second = H.udp4_data(pkt:get_payload()) pkt:accept() end)
		finally(function() q2:close() end)
		tx:sendto("relay", "127.0.0.1", 7013)
		pump(q, function() return first end)
		pump(q2, function() return second end)
		assert.equal("relay", second)
		assert.equal("relay", rx:recv(1))
		assert.equal(1, q:stats().requeued)
	end)

	it("stop() accepts past the rest of the hook, which accept() does not", function()
		-- mangle runs before filter on OUTPUT; filter drops this port.
		H.sh("iptables -t mangle -A OUTPUT -o lo -p udp --dport 7014 -j NFQUEUE --queue-num 1")
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7014 -j DROP")
		local rx, tx = H.udp("127.0.0.1", 7014), H.udp()
		local n = 0
		q = bound_queue(1, function(pkt)
			n = n + 1
			if H.udp4_data(pkt:get_payload()) == "stop" then pkt:stop() else pkt:accept() end
		end)
		tx:sendto("accept", "127.0.0.1", 7014)
		tx:sendto("stop", "127.0.0.1", 7014)
		pump(q, function() return n == 2 end)
		assert.same({ "stop" }, rx:recv_all(0.3))
	end)

	it("lays header views over real packets and lists the queue", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7015 -j NFQUEUE --queue-num 1")
		local tx = H.udp()
		local got
		q = bound_queue(1, function(pkt)
			local ip, udp = pkt:ip(), pkt:udp()
			got = { ip:src_text(), ip:dst_text(), ip.protocol, udp.dport, pkt:tcp(), pkt:ip6() }
		end)
		tx:sendto("views", "127.0.0.1", 7015)
		pump(q, function() return got end)
		assert.same({ "127.0.0.1", "127.0.0.1", 17, 7015 }, got)
		local stats = nfq.queue_stats()
		assert.equal(2, stats[1].copy_mode)
		assert.equal(65531, stats[1].copy_range, "the kernel's largest copy range")
	end)
end)

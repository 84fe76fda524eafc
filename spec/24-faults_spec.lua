-- Faults with real traffic: a stalled daemon with a full queue, and a daemon
-- killed with SIGKILL and started again, with and without --queue-bypass.
local H = require "helpers.net"

local accept_all = H.root .. "/scripts/examples/accept_all.lua"

local function count_line(d, key)
	d:signal("USR1")
	return tonumber(H.wait_for(function() return d:output():match(".*" .. key .. "=(%d+)") end, 5, key))
end

describe("faults #kernel", function()
	local d
	before_each(function() H.fresh_netns() end)
	after_each(function()
		if d then d:signal("CONT") d:stop() end
		d = nil
	end)

	it("counts the kernel's drops while the daemon is stalled, then goes on", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 9700 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 9700), H.udp()
		d = H.daemon(accept_all .. " --queue 1 --max-len 4")
		H.wait_queue_ready(1)
		d:signal("STOP")
		for i = 1, 20 do tx:sendto("s" .. i, "127.0.0.1", 9700) end
		assert.is_nil(rx:recv(0.2))
		d:signal("CONT")
		assert.equal(4, #rx:recv_all(0.3))
		assert.equal(16, count_line(d, "kernel_queue_dropped"))
		tx:sendto("after", "127.0.0.1", 9700)
		assert.equal("after", rx:recv(1))
	end)

	it("with --fail-open, a full queue lets packets through while the daemon is stalled", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 9701 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 9701), H.udp()
		d = H.daemon(accept_all .. " --queue 1 --max-len 4 --fail-open")
		H.wait_queue_ready(1)
		d:signal("STOP")
		for i = 1, 20 do tx:sendto("s" .. i, "127.0.0.1", 9701) end
		assert.equal(16, #rx:recv_all(0.3))
		d:signal("CONT")
		assert.equal(4, #rx:recv_all(0.3))
	end)

	it("survives netlink overruns (ENOBUFS) with a tiny --sock-len, counts them and goes on", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 9703 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 9703), H.udp()
		local ffi = require "ffi"
		ffi.C.setsockopt(tx.fd, 1, 32, ffi.new("int[1]", 8 * 1024 * 1024), 4) -- SO_SNDBUFFORCE
		d = H.daemon(accept_all .. " --queue 1 --sock-len 4096")
		H.wait_queue_ready(1)
		d:signal("STOP")
		for i = 1, 400 do tx:sendto("f" .. i, "127.0.0.1", 9703) end
		H.wait_for(function() return H.queue_info(1).user_dropped > 0 end, 5, "the socket to overflow")
		d:signal("CONT")
		rx:recv_all(0.3)
		assert.is_true(count_line(d, "enobufs") >= 1)
		assert.is_true(count_line(d, "kernel_user_dropped") > 0)
		tx:sendto("after the flood", "127.0.0.1", 9703)
		assert.equal("after the flood", rx:recv(1))
	end)

	-- Send a packet every 5 ms, SIGKILL the daemon, start it again 0.5 s later;
	-- the longest silence at the receiver and whether traffic resumed.
	local function kill_and_restart(bypass)
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 9702 -j NFQUEUE --queue-num 1" .. (bypass and " --queue-bypass" or ""))
		local rx, tx = H.udp("127.0.0.1", 9702), H.udp()
		d = H.daemon(accept_all .. " --queue 1")
		H.wait_queue_ready(1)
		local last, gap, got, killed_at, restarted = H.now(), 0, 0, nil, false
		local start = H.now()
		local i = 0
		while H.now() - start < 2.5 do
			i = i + 1
			tx:sendto("k" .. i, "127.0.0.1", 9702)
			H.sleep(0.005)
			while rx:recv(0) do
				got = got + 1
				gap = math.max(gap, H.now() - last)
				last = H.now()
			end
			if not killed_at and H.now() - start > 0.5 then
				d:signal("KILL")
				killed_at = H.now()
			elseif killed_at and not restarted and H.now() - killed_at > 0.5 then
				d = H.daemon(accept_all .. " --queue 1")
				restarted = true
			end
		end
		local resumed_at = last
		return gap, got, i, resumed_at - start > 2
	end

	it("keeps traffic flowing while the daemon is gone when the rule has --queue-bypass", function()
		local gap, got, sent, resumed = kill_and_restart(true)
		print(("  bypass: longest gap %.0f ms, %d of %d packets delivered"):format(gap * 1000, got, sent))
		assert.is_true(gap < 0.25, "longest gap " .. gap)
		assert.is_true(resumed)
		assert.is_true(got >= sent - 5)
	end)

	it("stops traffic while the daemon is gone without --queue-bypass, and resumes after the restart", function()
		local gap, got, sent, resumed = kill_and_restart(false)
		print(("  no bypass: longest gap %.0f ms, %d of %d packets delivered"):format(gap * 1000, got, sent))
		assert.is_true(gap >= 0.45, "longest gap " .. gap)
		assert.is_true(resumed, "traffic resumed after the restart")
		assert.is_true(got < sent)
	end)
end)

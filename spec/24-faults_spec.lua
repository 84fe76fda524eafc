-- Faults with real traffic: a stalled daemon with a full queue, and a daemon
-- killed with SIGKILL and started again, with and without --queue-bypass.
local H = require "helpers.net"

local accept_all = H.root .. "/scripts/examples/accept_all.lua"

-- SIGSTOP returns before every thread has stopped: wait until each is.
local function stall(d)
	d:signal("STOP")
	H.wait_for(function()
		for task in H.sh("ls /proc/" .. d.pid .. "/task"):gmatch("%d+") do
			local stat = H.read_file("/proc/" .. d.pid .. "/task/" .. task .. "/stat") or ""
			if not stat:match("^%d+ %b() T") then return false end
		end
		return true
	end, 5, "every thread of the daemon to stop")
end

local function count_line(d, key)
	d:signal("USR1")
	return tonumber(H.wait_for(function() return d:output():match(".*" .. key .. "=(%d+)") end, 5, key))
end

describe("faults #kernel", function()
	local d
	H.isolated_tests()

	it("counts the kernel's drops while the daemon is stalled, then goes on", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 9700 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 9700), H.udp()
		d = H.daemon(accept_all .. " --queue 1 --max-len 4")
		H.wait_queue_ready(1)
		stall(d)
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
		stall(d)
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
		stall(d)
		for i = 1, 400 do tx:sendto("f" .. i, "127.0.0.1", 9703) end
		H.wait_for(function() return H.queue_info(1).user_dropped > 0 end, 5, "the socket to overflow")
		d:signal("CONT")
		rx:recv_all(0.3)
		assert.is_true(count_line(d, "enobufs") >= 1)
		assert.is_true(count_line(d, "kernel_user_dropped") > 0)
		tx:sendto("after the flood", "127.0.0.1", 9703)
		assert.equal("after the flood", rx:recv(1))
	end)

	-- Send a numbered packet every 5 ms, SIGKILL the daemon, start it again
	-- 0.5 s later. Which packets of each phase arrived tells what happened; the
	-- longest silence is printed for the README, not asserted.
	local function kill_and_restart(bypass)
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 9702 -j NFQUEUE --queue-num 1" .. (bypass and " --queue-bypass" or ""))
		local rx, tx = H.udp("127.0.0.1", 9702), H.udp()
		d = H.daemon(accept_all .. " --queue 1")
		H.wait_queue_ready(1)
		local sent = { up = 0, down = 0, again = 0 }
		local got = { up = 0, down = 0, again = 0 }
		local phase_of = {}
		local phase, i = "up", 0
		local last, gap = H.now(), 0
		local start, killed_at = H.now(), nil
		while H.now() - start < 2.5 do
			i = i + 1
			phase_of[i] = phase
			sent[phase] = sent[phase] + 1
			tx:sendto(tostring(i), "127.0.0.1", 9702)
			H.sleep(0.005)
			while true do
				local data = rx:recv(0)
				if not data then break end
				local p = phase_of[tonumber(data)]
				got[p] = got[p] + 1
				gap = math.max(gap, H.now() - last)
				last = H.now()
			end
			if phase == "up" and H.now() - start > 0.5 then
				d:signal("KILL")
				d:wait()
				killed_at, phase = H.now(), "down"
			elseif phase == "down" and H.now() - killed_at > 0.5 then
				d = H.daemon(accept_all .. " --queue 1")
				H.wait_queue_ready(1)
				phase = "again"
			end
		end
		for _, data in ipairs(rx:recv_all(0.3)) do
			local p = phase_of[tonumber(data)]
			got[p] = got[p] + 1
		end
		print(("  %s: longest gap %.0f ms; delivered up %d/%d, down %d/%d, after restart %d/%d"):format(
			bypass and "bypass" or "no bypass", gap * 1000, got.up, sent.up, got.down, sent.down, got.again, sent.again))
		return sent, got
	end

	it("keeps traffic flowing while the daemon is gone when the rule has --queue-bypass", function()
		local sent, got = kill_and_restart(true)
		assert.is_true(sent.down > 10)
		assert.equal(sent.down, got.down, "every packet sent while no daemon was bound")
		assert.equal(sent.again, got.again)
	end)

	it("stops traffic while the daemon is gone without --queue-bypass, and resumes after the restart", function()
		local sent, got = kill_and_restart(false)
		assert.is_true(sent.down > 10)
		assert.equal(0, got.down, "nothing passes while no daemon is bound")
		assert.is_true(sent.again > 10)
		assert.equal(sent.again, got.again, "everything passes again once it is back")
	end)
end)

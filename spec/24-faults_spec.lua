-- Faults with real traffic: a stalled daemon with a full queue, and a daemon
-- killed with SIGKILL and started again, with and without --queue-bypass.
-- Then stopping under load: a queue unbound (library) or a daemon stopped
-- while a separate process floods it.
local H = require "helpers.net"
local nfq = require "nfq"
local ffi = require "ffi"

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

-- The kernel drops what is still queued at the unbind and refuses verdicts
-- after it, so every packet must get its verdict before, and the counters
-- may claim only verdicts the kernel took. Packets are counted by rules: the
-- NFQUEUE rule counts every packet sent; mangle POSTROUTING counts every
-- packet let through (by the script, by the fallback, by the kernel's
-- fail-open during the stop, by --queue-bypass when nobody is bound), and,
-- apart, those with the script's mark 7.
local flood_script = [[
local ffi = require "ffi"
ffi.cdef [=[
int socket(int domain, int type, int protocol);
long sendto(int fd, const void *buf, size_t len, int flags, const void *addr, unsigned alen);
struct flood_sockaddr_in { uint16_t family; uint16_t port; uint8_t addr[4]; uint8_t zero[8]; };
]=]
local port, stop_file = tonumber(arg[1]), arg[2]
local fd = ffi.C.socket(2, 2, 0)
local sa = ffi.new("struct flood_sockaddr_in", { family = 2, port = port % 256 * 256 + math.floor(port / 256),
	addr = { 127, 0, 0, 1 } })
local deadline = os.time() + 60
while os.time() < deadline do
	for _ = 1, 100 do ffi.C.sendto(fd, "flood", 5, 0, sa, ffi.sizeof(sa)) end
	local f = io.open(stop_file)
	if f then f:close() break end
end
]]

--- A process sending UDP datagrams to 127.0.0.1:port as fast as it can
-- (for 60 s at most), until the function returned is called.
local function start_flood(port)
	local script = H.tmpfile(flood_script, ".lua")
	local stop_file, done_file = script .. ".stop", script .. ".done"
	os.execute(("(luajit %s %d %s; touch %s) > /dev/null 2>&1 &"):format(script, port, stop_file, done_file))
	local function stop()
		os.execute("touch " .. stop_file)
		H.wait_for(function() return H.read_file(done_file) end, 5, "the flood to end")
	end
	finally(stop)
	return stop
end

--- Wait until every packet sent has passed the rules (none is left queued).
local function settled_counts(port)
	local last
	return H.wait_for(function()
		H.sleep(0.1)
		local c = {
			sent = H.rule_packets("filter", "OUTPUT", "NFQUEUE"),
			through = H.rule_packets("mangle", "POSTROUTING", "dpt:" .. port),
			marked = H.rule_packets("mangle", "POSTROUTING", "mark match 0x7"),
		}
		local same = last and last.sent == c.sent and last.through == c.through
		last = c
		return same and c
	end, 5, "the counters to settle")
end

local function count_rules(port, bypass)
	H.sh(("iptables -A OUTPUT -o lo -p udp --dport %d -j NFQUEUE --queue-num 1%s"):format(port,
		bypass and " --queue-bypass" or ""))
	H.sh(("iptables -t mangle -A POSTROUTING -o lo -p udp --dport %d"):format(port))
	H.sh(("iptables -t mangle -A POSTROUTING -o lo -p udp --dport %d -m mark --mark 7"):format(port))
end

describe("stopping under load #kernel", function()
	H.isolated_tests()

	it("unbinds a library queue 30 times under a flood: nothing lost, every verdict counted was taken", function()
		count_rules(9720, true)
		local stop_flood = start_flood(9720)
		local q = assert(nfq.new())
		local kernel = { waiting = 0, queue_dropped = 0, user_dropped = 0 }
		local at_unbind = ffi.new("struct nfq_kernel_stats")
		for _ = 1, 30 do
			assert(q:bind(1, function(pkt)
				pkt:set_mark(7)
				pkt:accept()
			end))
			local t = H.now()
			while H.now() - t < 0.02 do assert(q:run(false)) end
			assert(q:unbind())
			-- the kernel's counters as they were just before the unbind
			assert.equal(0, nfq._C.nfq_queue_kernel_stats(q.q, at_unbind))
			for k in pairs(kernel) do kernel[k] = kernel[k] + tonumber(at_unbind[k]) end
		end
		stop_flood()
		local st = q:stats()
		q:close()
		local c = settled_counts(9720)
		print(("  %d sent, %d through (%d by the script, %d by the fallback at unbind), kernel drops %d+%d")
			:format(c.sent, c.through, c.marked, st.fallback, kernel.queue_dropped, kernel.user_dropped))
		assert.is_true(st.fallback > 0, "some packets were still queued at an unbind")
		assert.equal(st.received, st.accepted, "every packet received got a verdict")
		assert.equal(0, st.verdict_errors)
		assert.equal(c.marked, st.accepted - st.fallback, "every accept the script gave was taken")
		assert.is_true(c.through - c.marked >= st.fallback, "every fallback accept was taken")
		assert.same({ waiting = 0, queue_dropped = 0, user_dropped = 0 }, kernel)
		assert.equal(c.sent, c.through, "nothing lost")
	end)

	it("stops a daemon under a flood: nothing lost, its counters claim only verdicts the kernel took", function()
		count_rules(9721, true)
		-- slower than the flood: the queue fills, and is full at the stop
		local script = H.tmpfile([[
return function(pkt)
	local t = os.clock()
	while os.clock() - t < 0.00002 do end
	pkt:set_mark(7)
	pkt:accept()
end]], ".lua")
		local stop_flood = start_flood(9721)
		local d = H.daemon(script .. " --queue 1")
		d:wait_output("bound")
		H.wait_for(function() return H.rule_packets("mangle", "POSTROUTING", "mark match 0x7") > 1000 end, 5,
			"the daemon to pass packets")
		d:signal("TERM")
		assert.equal(0, d:wait())
		stop_flood()
		local c = settled_counts(9721)
		local out = d:output()
		local function stat(k) return tonumber(out:match(".*[ :]" .. k .. "=(%d+)")) end
		print(("  %d sent, %d through (%d by the script, %d by the fallback at the stop), kernel drops %d+%d")
			:format(c.sent, c.through, c.marked, stat("fallback"), stat("kernel_queue_dropped"),
				stat("kernel_user_dropped")))
		assert.is_true(stat("fallback") > 0, "packets were still queued at the stop")
		assert.equal(stat("received"), stat("accepted"), "every packet received got a verdict")
		assert.equal(0, stat("verdict_errors"))
		assert.equal(c.marked, stat("accepted") - stat("fallback"), "every accept the script gave was taken")
		assert.is_true(c.through - c.marked >= stat("fallback"), "every fallback accept was taken")
		assert.equal(c.sent, c.through + stat("kernel_queue_dropped") + stat("kernel_user_dropped"), "nothing lost")
	end)
end)

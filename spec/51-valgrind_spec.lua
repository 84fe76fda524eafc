-- One run of the daemon under valgrind's memcheck: a few thousand packets,
-- held and reordered ones, a reload and a clean stop, with no invalid
-- access, no uninitialised bytes sent to the kernel and no leak.
local H = require "helpers.net"

describe("nfqlua under valgrind #kernel", function()
	before_each(function() H.fresh_netns() end)

	it("handles traffic, a reload and a stop without memory errors or leaks", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 9500 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 9500), H.udp()
		local log = H.tmpfile()
		local script = H.root .. "/scripts/examples/reorder.lua"
		local pidfile = log .. ".pid"
		os.execute(("(valgrind --error-exitcode=3 --leak-check=full --errors-for-leak-kinds=definite "
			.. "%s/nfqlua %s --queue 1 --pidfile %s > %s 2>&1; echo $? > %s.rc) &"):format(H.root, script, pidfile, log, log))
		H.wait_queue_ready(1, 30)
		local pid = H.wait_for(function() return tonumber(H.read_file(pidfile) or "") end, 30, "the pidfile")
		local got = 0
		for i = 1, 2000 do
			tx:sendto("p" .. i, "127.0.0.1", 9500)
			if i % 100 == 0 then got = got + #rx:recv_all(0.05) end
			if i == 1001 then
				os.execute("kill -HUP " .. pid)
			end
		end
		got = got + #rx:recv_all(0.5)
		os.execute("kill -TERM " .. pid)
		local rc = H.wait_for(function() return tonumber(H.read_file(log .. ".rc") or "") end, 30, "nfqlua to exit")
		local out = H.read_file(log)
		assert.equal(0, rc, out)
		assert.equal(2000, got + #rx:recv_all(0.2))
		assert.matches("ERROR SUMMARY: 0 errors", out)
		assert.matches("definitely lost: 0 bytes", out)
		assert.matches("reloaded", out)
	end)
end)

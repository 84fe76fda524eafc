-- libnfqlua from C: scripts/examples/embed.c is built against the in-tree
-- library and filters real packets beside its own libev timer.
local H = require "helpers.net"

describe("embedding from C #kernel", function()
	local binary = H.tmpfile()
	setup(function()
		H.sh(("cd %s && cc scripts/examples/embed.c -Isrc $(pkg-config --cflags luajit) "
			.. "-Lbuild -lnfqlua -lev -Wl,-rpath,%s/build -o %s"):format(H.root, H.root, binary))
	end)
	before_each(function() H.fresh_netns() end)

	it("runs the engine on the host's loop, with reload and counters", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 9300 -j NFQUEUE --queue-num 4")
		local rx, tx = H.udp("127.0.0.1", 9300), H.udp()
		local log = H.tmpfile()
		local pidfile = log .. ".pid"
		os.execute(("(%s %s/scripts/examples/drop_word.lua 4 > %s 2>&1 & echo $! > %s)"):format(binary, H.root, log, pidfile))
		local pid = H.wait_for(function() return tonumber(H.read_file(pidfile) or "") end)
		finally(function() os.execute("kill " .. pid .. " 2>/dev/null") end)
		H.wait_queue_ready(4)
		tx:sendto("fine", "127.0.0.1", 9300)
		tx:sendto("DROP me", "127.0.0.1", 9300)
		assert.same({ "fine" }, rx:recv_all(0.4))
		H.wait_for(function() return H.read_file(log):find("host timer: 2 packets, 1 accepted, 1 dropped", 1, true) end,
			5, "the host's timer line")
		os.execute("kill -HUP " .. pid)
		H.wait_for(function() return H.read_file(log):find("reloaded", 1, true) end, 5, "the reload")
		os.execute("kill -TERM " .. pid)
		H.wait_for(function() return not H.queue_info(4) end, 5, "the engine to unbind")
		-- the reloaded version ran on_stop; it carried no state over
		assert.matches("drop_word: dropped 0 packets", H.read_file(log), 1, true)
	end)
end)

-- nfqlua --queue A-B: one worker thread per queue, each with its own Lua
-- state, reloaded and counted together.
local H = require "helpers.net"

describe("queue ranges #kernel", function()
	local d
	H.isolated_tests()

	it("serves every queue of a --queue-balance rule, and reloads and counts each", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 9100 -j NFQUEUE --queue-balance 0:1")
		local rx = H.udp("0.0.0.0", 9100)
		local script = H.tmpfile("return function(pkt) pkt:accept() end", ".lua")
		d = H.daemon(script .. " --queue 0-1")
		H.wait_queue_ready(0)
		H.wait_queue_ready(1)
		-- The kernel spreads packets by a hash of their addresses: all of 127/8 is ours.
		local total = 0
		local tx = H.udp()
		for i = 1, 40 do
			tx:sendto("x", "127.0.0." .. i, 9100)
			total = total + 1
		end
		assert.equal(total, #rx:recv_all(0.5))
		d:signal("HUP")
		-- One line for the whole reload, which swapped both workers.
		d:wait_output("queues 0-1: reloaded " .. script .. ": version 2 runs now")
		d:signal("USR1")
		d:wait_output("queue 1: received=")
		d:wait_output("queue 0: received=")
		local out = d:output()
		local n0 = tonumber(out:match("queue 0: received=(%d+)"))
		local n1 = tonumber(out:match("queue 1: received=(%d+)"))
		assert.is_true(n0 > 0 and n1 > 0, out)
		assert.equal(total, n0 + n1)
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.matches("all queues unbound", d:output(), 1, true)
	end)

	it("fails as a whole when one queue of the range cannot be bound", function()
		local nfq = require "nfq"
		local q = assert(nfq.new())
		assert(q:bind(3, function() end))
		local script = H.tmpfile("return function(pkt) pkt:accept() end", ".lua")
		local rc, out = H.run_nfqlua(script .. " --queue 2-4")
		q:close()
		assert.equal(1, rc)
		assert.matches("nfqlua: queue 3 is already bound", out, 1, true)
		assert.is_nil(H.queue_info(2), "the other workers unbound their queues")
		assert.is_nil(H.queue_info(4))
	end)

	it("rejects malformed ranges", function()
		local script = H.tmpfile("return function(pkt) pkt:accept() end", ".lua")
		for _, bad in ipairs { "3-1", "0-64", "1-", "-1", "a-b", "0-70000" } do
			local rc, out = H.run_nfqlua(script .. " --queue " .. bad)
			assert.equal(2, rc, bad)
			assert.matches("^nfqlua: %-%-queue", out)
		end
	end)
end)

-- --lua-mem-limit: a script that allocates without bound gets a Lua memory
-- error; its packets get the fallback verdict and the daemon lives on.
local H = require "helpers.net"

describe("Lua memory limit #kernel", function()
	local d
	H.isolated_tests()

	it("turns runaway allocation into a counted script error", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 9800 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 9800), H.udp()
		local script = H.tmpfile([[
return function(pkt)
	if pkt:get_payload():find("grow", 1, true) then
		-- Unreachable once the error unwinds: the collector gets it back.
		local hoard = {}
		while true do hoard[#hoard + 1] = string.rep("x", 4096) .. #hoard end
	end
	pkt:accept()
end]], ".lua")
		d = H.daemon(script .. " --queue 1 --lua-mem-limit 16777216")
		H.wait_queue_ready(1)
		tx:sendto("grow", "127.0.0.1", 9800)
		tx:sendto("normal", "127.0.0.1", 9800)
		assert.same({ "grow", "normal" }, rx:recv_all(0.5))
		d:wait_output("out of memory: " .. script .. " reached its Lua memory limit of 16777216 bytes (--lua-mem-limit)")
		d:signal("USR1")
		d:wait_output("fallback=1 script_errors=1")
		-- The failed call's garbage is collected at once, not left to fail
		-- the next packets: the heap is far below the limit again.
		local kb = tonumber(d:output():match("lua_kb=(%d+)"))
		assert.is_true(kb < 4096, "the Lua heap after the memory error: " .. kb .. " kB")
	end)

	it("rejects a limit too small to be useful", function()
		local rc, out = H.run_nfqlua(H.root .. "/scripts/examples/accept_all.lua --queue 1 --lua-mem-limit 1000")
		assert.equal(2, rc)
		assert.matches("%-%-lua%-mem%-limit must be a number from 1048576", out)
	end)

	it("interrupts a callback that runs past --script-timeout, and exits when it cannot", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 9801 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 9801), H.udp()
		local script = H.tmpfile([[
return function(pkt)
	local data = pkt:get_payload()
	if data:find("slow", 1, true) then while true do os.time() end end
	if data:find("compiled", 1, true) then local n = 0 while true do n = n + 1 end end
	pkt:accept()
end]], ".lua")
		d = H.daemon(script .. " --queue 1 --script-timeout 100 --fallback drop")
		H.wait_queue_ready(1)
		tx:sendto("slow", "127.0.0.1", 9801)
		tx:sendto("fine", "127.0.0.1", 9801)
		assert.same({ "fine" }, rx:recv_all(0.6))
		d:wait_output(script .. ":3: script timeout: the call ran longer than 100 ms")
		d:signal("USR1")
		d:wait_output("fallback=1 script_errors=1 script_timeouts=1")
		-- A JIT-compiled endless loop checks no hook: the daemon leaves instead.
		tx:sendto("compiled", "127.0.0.1", 9801)
		assert.equal(70, d:wait(5))
		assert.matches("cannot be interrupted", d:output(), 1, true)
	end)
end)

-- Every way into a script is guarded alike: loading it, on_start, on_reload,
-- on_stop and --check run under the watchdog and the memory limit; a stop
-- interrupts a slow start; os.exit() stops the daemon cleanly; a reload of
-- several queues swaps all or none; a root script loads only root's files.
local H = require "helpers.net"

local ACCEPT = "return function(pkt) pkt:accept() end"

describe("guarded script calls", function()
	it("--check applies --script-timeout and --lua-mem-limit to the script's top level", function()
		local looping = H.tmpfile("jit.off() while true do end", ".lua")
		local rc, out = H.run_nfqlua("--check --script-timeout 200 " .. looping)
		assert.equal(1, rc)
		assert.matches("script timeout: the call ran longer than 200 ms", out, 1, true)

		local hoarding = H.tmpfile("local t = {} for i = 1, 1e9 do t[i] = ('x'):rep(64) .. i end", ".lua")
		rc, out = H.run_nfqlua("--check --lua-mem-limit 8000000 " .. hoarding)
		assert.equal(1, rc)
		assert.matches("out of memory: " .. hoarding .. " reached its Lua memory limit of 8000000 bytes", out, 1, true)
	end)

	it("says what a non-string error object is", function()
		local with_tostring = H.tmpfile(
			[[error(setmetatable({}, { __tostring = function() return "custom failure" end }))]], ".lua")
		local rc, out = H.run_nfqlua("--check " .. with_tostring)
		assert.equal(1, rc)
		assert.matches("nfqlua: custom failure", out, 1, true)

		local plain = H.tmpfile("error({ code = 1 })", ".lua")
		rc, out = H.run_nfqlua("--check " .. plain)
		assert.equal(1, rc)
		assert.matches(plain .. ":1: error object is a table value", out, 1, true)

		local broken_tostring = H.tmpfile([[error(setmetatable({}, { __tostring = function() error("no") end }))]], ".lua")
		rc, out = H.run_nfqlua("--check " .. broken_tostring)
		assert.equal(1, rc)
		assert.matches("error object is a table value", out, 1, true)
	end)

	it("warns about a table key that looks like a hook but is none", function()
		local typo = H.tmpfile("return { on_packet = function(p) p:accept() end, on_tmer = function() end }", ".lua")
		local rc, out = H.run_nfqlua("--check " .. typo)
		assert.equal(0, rc)
		assert.matches("the script's table has the key on_tmer, which nfqlua never calls; "
			.. "the hooks are on_packet, on_start, on_stop, on_reload, on_timer", out, 1, true)
	end)

	it("refuses os.exit() where nothing could stop cleanly (--check)", function()
		local exiting = H.tmpfile("os.exit(3)", ".lua")
		local rc, out = H.run_nfqlua("--check " .. exiting)
		assert.equal(1, rc)
		assert.matches("os.exit(3) is not available here", out, 1, true)
	end)
end)

describe("a script run as root loads only files root alone can change", function()
	local dir
	before_each(function()
		dir = H.sh("mktemp -d /tmp/nfqguard_XXXXXX"):gsub("%s+$", "")
		H.sh("chmod 755 " .. dir)
	end)
	after_each(function() H.sh("rm -rf " .. dir) end)

	local function write(path, text, owner)
		local f = assert(io.open(path, "w"))
		f:write(text)
		f:close()
		if owner then H.sh(("chown %s '%s'"):format(owner, path)) end
	end

	it("refuses a module next to the script that another user owns", function()
		write(dir .. "/helper.lua", "return { answer = 42 }", "65534")
		write(dir .. "/filter.lua", 'local h = require "helper"\n' .. ACCEPT)
		local rc, out = H.run_nfqlua("--check " .. dir .. "/filter.lua")
		assert.equal(1, rc)
		assert.matches("refusing to run '" .. dir .. "/helper.lua' as root: it belongs to uid 65534", out, 1, true)

		H.sh("chown root " .. dir .. "/helper.lua")
		rc, out = H.run_nfqlua("--check " .. dir .. "/filter.lua")
		assert.equal(0, rc, out)
	end)

	it("refuses loadfile and dofile of another user's file", function()
		write(dir .. "/data.lua", "return 1", "65534")
		write(dir .. "/filter.lua", ('dofile("%s/data.lua")\n'):format(dir) .. ACCEPT)
		local rc, out = H.run_nfqlua("--check " .. dir .. "/filter.lua")
		assert.equal(1, rc)
		assert.matches("it belongs to uid 65534", out, 1, true)
	end)

	it("does not search the working directory for modules", function()
		H.sh("mkdir " .. dir .. "/cwd " .. dir .. "/scripts")
		write(dir .. "/cwd/planted.lua", "return {}")
		write(dir .. "/scripts/filter.lua", 'require "planted"\n' .. ACCEPT)
		local rc, out = H.run_nfqlua("--check " .. dir .. "/scripts/filter.lua", "cd " .. dir .. "/cwd && ")
		assert.equal(1, rc)
		assert.matches("module 'planted' not found", out, 1, true)
	end)
end)

describe("guarded script calls in the daemon #kernel", function()
	H.isolated_tests()

	local function rule(port, queues)
		H.sh(("iptables -A OUTPUT -o lo -p udp --dport %d -j NFQUEUE %s"):format(port, queues or "--queue-num 1"))
	end

	it("times out a looping top level at start: nothing is bound, the daemon exits", function()
		local script = H.tmpfile("jit.off() while true do end", ".lua")
		local rc, out = H.run_nfqlua(script .. " --queue 1 --script-timeout 200")
		assert.equal(1, rc)
		assert.matches("script timeout: the call ran longer than 200 ms", out, 1, true)
		assert.is_nil(H.queue_info(1))
	end)

	it("times out a hanging on_start: the queue's packets get the fallback, on_stop is not called", function()
		rule(9900)
		local rx, tx = H.udp("127.0.0.1", 9900), H.udp()
		local script = H.tmpfile([[
return {
	on_start = function() jit.off() while true do end end,
	on_packet = function(pkt) pkt:drop() end,
	on_stop = function() io.stderr:write("ON_STOP RAN\n") end,
}]], ".lua")
		local d = H.daemon(script .. " --queue 1 --script-timeout 300")
		H.wait_queue_ready(1)
		for i = 1, 5 do tx:sendto("early " .. i, "127.0.0.1", 9900) end
		assert.equal(1, d:wait(5))
		assert.matches("on_start failed: [^\n]*script timeout", d:output())
		assert.is_nil(d:output():find("ON_STOP RAN", 1, true), "on_stop runs only after a good on_start")
		assert.equal(5, #rx:recv_all(0.3), "the fallback (accept) for packets queued meanwhile")
	end)

	it("honours SIGTERM during a slow load and a slow on_start, with no watchdog", function()
		local loading = H.tmpfile("jit.off() while true do end", ".lua")
		local d = H.daemon(loading .. " --queue 1")
		H.sleep(0.3)
		d:signal("TERM")
		assert.equal(0, d:wait(5))
		assert.is_nil(H.queue_info(1))

		rule(9901)
		local rx, tx = H.udp("127.0.0.1", 9901), H.udp()
		local starting = H.tmpfile([[
return {
	on_start = function() jit.off() while true do end end,
	on_packet = function(pkt) pkt:drop() end,
}]], ".lua")
		d = H.daemon(starting .. " --queue 1")
		H.wait_queue_ready(1)
		for i = 1, 5 do tx:sendto("held " .. i, "127.0.0.1", 9901) end
		d:signal("TERM")
		assert.equal(0, d:wait(5))
		assert.equal(5, #rx:recv_all(0.3), "queued packets got the fallback verdict")
	end)

	it("reloads after a slow start when SIGHUP came during it", function()
		local script = H.tmpfile([[
return {
	on_start = function() local t = os.clock() while os.clock() - t < 0.8 do end end,
	on_packet = function(pkt) pkt:accept() end,
}]], ".lua")
		local d = H.daemon(script .. " --queue 1")
		H.wait_queue_ready(1)
		d:signal("HUP")
		d:wait_output("got SIGHUP while starting: reloading once every queue serves")
		d:wait_output("queue 1: reloaded " .. script .. ": version 2 runs now")
	end)

	it("keeps the running version when a reload's top level or on_reload times out", function()
		rule(9902)
		local rx, tx = H.udp("127.0.0.1", 9902), H.udp()
		local path = H.tmpfile([[
return {
	on_packet = function(pkt) pkt:accept() end,
	on_reload = function() jit.off() while true do end end,
}]], ".lua")
		-- Only a script that runs accepts: the fallback drops.
		local d = H.daemon(path .. " --queue 1 --script-timeout 300 --fallback drop")
		H.wait_queue_ready(1)
		-- on_reload of the running version loops: cut short, the reload refused.
		d:signal("HUP")
		local refused = "version 1 keeps running: [^\n]*script timeout"
		H.wait_for(function() return d:output():find(refused) end, 5, "the first reload to fail")
		-- A new version whose top level loops: likewise.
		local f = assert(io.open(path, "w"))
		f:write("jit.off() while true do end")
		f:close()
		d:signal("HUP")
		H.wait_for(function()
			local _, n = d:output():gsub(refused, "")
			return n == 2
		end, 5, "the second reload to fail")
		tx:sendto("after", "127.0.0.1", 9902)
		assert.equal("after", rx:recv(1), "version 1 still filters")
		d:signal("TERM")
		assert.equal(0, d:wait(5))
		assert.matches("reload_failures=2 version=1", d:output(), 1, true)
	end)

	it("cuts short a hanging on_stop and still stops cleanly", function()
		local script = H.tmpfile([[
return {
	on_packet = function(pkt) pkt:accept() end,
	on_stop = function() jit.off() while true do end end,
}]], ".lua")
		local d = H.daemon(script .. " --queue 1 --script-timeout 200")
		H.wait_queue_ready(1)
		d:signal("TERM")
		assert.equal(0, d:wait(5))
		assert.matches("on_stop failed: [^\n]*script timeout", d:output())
		assert.matches("all queues unbound", d:output(), 1, true)
	end)

	it("turns os.exit() in a script into a clean stop with its status", function()
		rule(9903)
		local rx, tx = H.udp("127.0.0.1", 9903), H.udp()
		local pidfile = H.tmpfile("", ".pid")
		os.remove(pidfile)
		local script = H.tmpfile([[
return {
	on_packet = function(pkt)
		if pkt:get_payload():find("quit", 1, true) then os.exit(3) end
		pkt:accept()
	end,
	on_stop = function() io.stderr:write("ON_STOP RAN\n") end,
}]], ".lua")
		local d = H.daemon(script .. " --queue 1 --pidfile " .. pidfile)
		H.wait_queue_ready(1)
		tx:sendto("before", "127.0.0.1", 9903)
		tx:sendto("quit", "127.0.0.1", 9903)
		assert.equal(3, d:wait(5))
		local out = d:output()
		assert.matches("called os.exit(3): stopping", out, 1, true)
		assert.matches("ON_STOP RAN", out, 1, true)
		assert.matches("script_errors=0", out, 1, true)
		assert.is_nil(H.read_file(pidfile), "the pidfile is removed")
		-- The packet that asked gets the fallback (accept); none is lost.
		assert.same({ "before", "quit" }, rx:recv_all(0.3))
	end)

	it("swaps all queues or none when one worker's reload fails", function()
		rule(9904, "--queue-balance 0:1")
		local rx, tx = H.udp("0.0.0.0", 9904), H.udp()
		local token = H.tmpfile("", ".token")
		local path = H.tmpfile("", ".lua")
		-- Version 1 accepts every packet, versions 2 and 3 drop them all.
		local function version(verdict, top)
			local f = assert(io.open(path, "w"))
			f:write((top or "") .. ("return function(pkt) pkt:%s() end"):format(verdict))
			f:close()
		end
		local function delivered()
			for i = 1, 40 do tx:sendto("p" .. i, "127.0.0." .. i, 9904) end
			return #rx:recv_all(0.5)
		end
		version("accept")
		local d = H.daemon(path .. " --queue 0-1")
		H.wait_queue_ready(0)
		H.wait_queue_ready(1)
		-- Version 2 loads in one worker only: the first to take the token.
		version("drop", ('assert(os.rename("%s", "%s.taken"), "the other worker took the token")\n'):format(token, token))
		d:signal("HUP")
		d:wait_output("queues 0-1: reload of " .. path .. " failed, version 1 keeps running on every queue: queue ")
		assert.matches("the other worker took the token", d:output(), 1, true)
		assert.equal(40, delivered(), "both queues still run version 1")
		version("drop")
		d:signal("HUP")
		d:wait_output("queues 0-1: reloaded " .. path .. ": version 2 runs now")
		assert.equal(0, delivered(), "both queues run the new version")
		d:signal("USR1")
		d:wait_output("queue 0: received=")
		d:wait_output("queue 1: received=")
		local out = d:output()
		assert.matches("queue 0: received=%d+ .- reloads=1 reload_failures=1 version=2", out)
		assert.matches("queue 1: received=%d+ .- reloads=1 reload_failures=1 version=2", out)
		local _, lines = out:gsub("reload of ", "")
		assert.equal(1, lines, "one line for the failed reload")
	end)

	-- The watchdog and the main thread reach into the workers' engines: a
	-- ThreadSanitizer build (make tsan) must find no race among them.
	local tsan = os.getenv("NFQLUA_TSAN")
	local with_tsan = tsan and it or pending
	with_tsan("races nothing between workers, watchdog and reloads (ThreadSanitizer build)", function()
		rule(9905, "--queue-balance 0:1")
		local rx, tx = H.udp("0.0.0.0", 9905), H.udp()
		local script = H.tmpfile([[
local seen = 0
return {
	on_packet = function(pkt)
		seen = seen + 1
		if pkt:get_payload():find("slow", 1, true) then jit.off() while true do end end
		pkt:accept()
	end,
	on_reload = function() return { seen = seen } end,
}]], ".lua")
		local nfqlua = H.nfqlua
		H.nfqlua = tsan
		local d = H.daemon(script .. " --queue 0-1 --script-timeout 100", "TSAN_OPTIONS=exitcode=66")
		H.nfqlua = nfqlua
		H.wait_queue_ready(0)
		H.wait_queue_ready(1)
		for round = 1, 6 do
			for i = 1, 20 do tx:sendto("x", "127.0.0." .. i, 9905) end
			tx:sendto("slow", "127.0.0." .. round, 9905)
			d:signal("HUP")
			d:wait_output(("version %d runs now"):format(round + 1), 10)
			rx:recv_all(0.05)
		end
		d:signal("TERM")
		local rc = d:wait(20)
		local out = d:output()
		assert.is_nil(out:find("ThreadSanitizer", 1, true), out)
		assert.equal(0, rc, out)
		assert.matches("script_timeouts=[1-9]", out)
	end)
end)

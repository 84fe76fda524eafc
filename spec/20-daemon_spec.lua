-- The nfqlua daemon: real traffic through real rules, and every kind of
-- bad input answered with one clear line and a non-zero exit.
local H = require "helpers.net"
local nfq = require "nfq"

local function one_line(out)
	local lines = {}
	for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
	assert.equal(1, #lines, "expected one line, got:\n" .. out)
	assert.is_nil(out:find("traceback", 1, true))
	return lines[1]
end

describe("nfqlua daemon #kernel", function()
	local d
	H.isolated_tests()

	local function start(script_text, args)
		local script = H.tmpfile(script_text, ".lua")
		d = H.daemon(script .. " " .. (args or "--queue 1"))
		d:wait_output("bound")
		H.wait_queue_ready(tonumber((args or ""):match("--queue (%d+)")) or 1)
		return script
	end

	it("filters real UDP traffic with a script", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 6001 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 6001), H.udp()
		d = H.daemon(H.root .. "/scripts/examples/drop_word.lua --queue 1")
		d:wait_output("bound")
		H.wait_queue_ready(1)
		for _, m in ipairs { "keep 1", "please DROP me", "keep 2" } do
			tx:sendto(m, "127.0.0.1", 6001)
		end
		assert.same({ "keep 1", "keep 2" }, rx:recv_all(0.5))
		d:signal("TERM")
		assert.equal(0, d:wait())
		local out = d:output()
		assert.matches("drop_word: dropping packets that contain \"DROP\"", out, 1, true)
		assert.matches("drop_word: dropped 1 packets", out, 1, true)
		assert.matches("received=3 accepted=2 dropped=1", out, 1, true)
	end)

	it("carries TCP connections", function()
		H.sh("iptables -A OUTPUT -o lo -p tcp --dport 6002 -j NFQUEUE --queue-num 1")
		start("local n = 0\nreturn function(pkt) n = n + 1 pkt:accept() end")
		local server = H.tcp_listen("127.0.0.1", 6002)
		local client = H.tcp_connect("127.0.0.1", 6002)
		local conn = assert(server:accept(2))
		client:send("hello over tcp")
		assert.equal("hello over tcp", conn:recv(2))
		client:close(); conn:close(); server:close()
	end)

	it("logs a script error with file and line, gives the fallback verdict and goes on", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 6003 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 6003), H.udp()
		local script = start([[
return function(pkt)
	if pkt:get_payload():find("boom") then
		error("exploded")
	end
	pkt:accept()
end]], "--queue 1 --fallback drop")
		tx:sendto("first", "127.0.0.1", 6003)
		tx:sendto("boom", "127.0.0.1", 6003)
		tx:sendto("last", "127.0.0.1", 6003)
		assert.same({ "first", "last" }, rx:recv_all(0.5))
		d:wait_output(script .. ":3: exploded")
		d:signal("INT")
		assert.equal(0, d:wait())
		assert.matches("fallback=1 script_errors=1", d:output(), 1, true)
	end)

	it("runs on_start and on_stop, and gives held packets the fallback verdict at SIGTERM", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 6004 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 6004), H.udp()
		start([[
local held = {}
return {
	on_start = function() print("on_start ran") end,
	on_packet = function(pkt) held[#held + 1] = pkt:retain() print("holding " .. pkt.id) end,
	on_stop = function() print("on_stop ran with " .. #held .. " held") end,
}]])
		d:wait_output("on_start ran")
		tx:sendto("held 1", "127.0.0.1", 6004)
		tx:sendto("held 2", "127.0.0.1", 6004)
		d:wait_output("holding 2")
		assert.is_nil(rx:recv(0.2))
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.same({ "held 1", "held 2" }, rx:recv_all(0.3))
		assert.matches("on_stop ran with 2 held", d:output(), 1, true)
		assert.matches("fallback=2", d:output(), 1, true)
	end)

	it("drops held packets at SIGTERM when the fallback is drop", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 6005 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 6005), H.udp()
		start("local held = {}\nreturn function(pkt) held[#held + 1] = pkt:retain() print('held') end",
			"--queue 1 --fallback drop")
		tx:sendto("never", "127.0.0.1", 6005)
		d:wait_output("held")
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.is_nil(rx:recv(0.3))
		assert.matches("dropped=1 repeated=0 requeued=0 fallback=1", d:output(), 1, true)
	end)

	it("says when the queue is already bound", function()
		local q = assert(nfq.new())
		assert(q:bind(9, function() end))
		local script = H.tmpfile("return function(pkt) pkt:accept() end", ".lua")
		local rc, out = H.run_nfqlua(script .. " --queue 9")
		q:close()
		assert.equal(1, rc)
		assert.matches("^nfqlua: queue 9 is already bound by another socket", one_line(out))
	end)

	it("logs the range the kernel copies: at most 65531 bytes, whatever was asked", function()
		start("return function(pkt) pkt:accept() end", "--queue 1 --range 65535")
		assert.matches("queue 1 bound (mode packet, range 65531, ", d:output(), 1, true)
		assert.equal(65531, H.queue_info(1).copy_range)
		d:stop()
		start("return function(pkt) pkt:accept() end", "--queue 2 --range 1000")
		assert.matches("queue 2 bound (mode packet, range 1000, ", d:output(), 1, true)
		assert.equal(1000, H.queue_info(2).copy_range)
	end)

	it("names the queue a worker failed on when it serves several", function()
		local script = H.tmpfile("error('no config for this queue')", ".lua")
		local rc, out = H.run_nfqlua(script .. " --queue 2-3")
		assert.equal(1, rc)
		assert.matches("^nfqlua: queue [23]: " .. script:gsub("%p", "%%%0") .. ":1: no config for this queue$",
			one_line(out))
		-- One queue: the line is the reason alone, as ever.
		rc, out = H.run_nfqlua(script .. " --queue 2")
		assert.equal(1, rc)
		assert.matches("^nfqlua: " .. script:gsub("%p", "%%%0") .. ":1: no config", one_line(out))
	end)

	it("says that root or CAP_NET_ADMIN is needed", function()
		local script = H.tmpfile("return function(pkt) pkt:accept() end", ".lua")
		os.execute("chmod 644 " .. script)
		local rc, out = H.run_nfqlua(script .. " --queue 1",
			"setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all ")
		assert.equal(1, rc)
		assert.equal("nfqlua: binding queue 1 needs root or CAP_NET_ADMIN", one_line(out))
	end)
end)

describe("nfqlua on_timer #kernel", function()
	local d
	H.isolated_tests()

	it("releases held packets without another packet coming: delay.lua keeps order and holds each", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 6101 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 6101), H.udp()
		d = H.daemon(H.root .. "/scripts/examples/delay.lua --queue 1", "NFQ_DELAY_MS=400")
		d:wait_output("bound")
		H.wait_queue_ready(1)
		for _, m in ipairs { "one", "two", "three" } do tx:sendto(m, "127.0.0.1", 6101) end
		-- Sent a moment ago, due in 400 ms: nothing may have arrived yet.
		assert.is_nil(rx:recv(0))
		assert.same({ "one", "two", "three" }, rx:recv_all(1.5))
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.matches("received=3 accepted=3 dropped=0 repeated=0 requeued=0 fallback=0 script_errors=0",
			d:output(), 1, true)
	end)

	it("follows a reload, and an error in it is counted and logged while ticks go on", function()
		local script = H.tmpfile([[
local n = 0
return { timer_interval = 0.02, on_packet = function(pkt) pkt:accept() end,
	on_timer = function() n = n + 1; if n == 3 then print("v1 tick") end end }]], ".lua")
		d = H.daemon(script .. " --queue 1")
		d:wait_output("v1 tick")
		local f = assert(io.open(script, "w"))
		f:write([[
local n = 0
return { timer_interval = 0.01, on_packet = function(pkt) pkt:accept() end,
	on_timer = function()
		n = n + 1
		if n == 2 then error("tick failed") end
		if n == 5 then print("v2 tick after the error") end
	end }]])
		f:close()
		d:signal("HUP")
		d:wait_output("v2 tick after the error")
		assert.matches(script .. ":5: tick failed", d:output(), 1, true)
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.matches("script_errors=1 ", d:output(), 1, true)
		assert.matches("reloads=1 ", d:output(), 1, true)
	end)
end)

describe("nfqlua command line", function()
	local good = H.tmpfile("return function(pkt) pkt:accept() end", ".lua")
	local ran = "timeout 10 unshare -n "

	local cases = {
		{ "no script", "--queue 1", 2, "^nfqlua: no SCRIPT given %(see nfqlua %-%-help%)$" },
		{ "no queue", good, 2, "^nfqlua: %-%-queue N is required" },
		{ "unknown flag", good .. " --queue 1 --bogus", 2, "^nfqlua: unknown option '%-%-bogus'" },
		{ "queue out of range", good .. " --queue 70000", 2,
			"^nfqlua: %-%-queue must be a number from 0 to 65535, got '70000'" },
		{ "queue not a number", good .. " --queue one", 2, "got 'one'" },
		{ "negative queue", good .. " --queue -1", 2, "got '%-1'" },
		{ "missing value", good .. " --queue", 2, "^nfqlua: option '%-%-queue' needs a value" },
		{ "bad mode", good .. " --queue 1 --mode all", 2, "^nfqlua: %-%-mode must be 'packet' or 'meta', got 'all'" },
		{ "bad range", good .. " --queue 1 --range 0", 2, "^nfqlua: %-%-range must be a number from 1 to 65535" },
		{ "bad max-len", good .. " --queue 1 --max-len 1x", 2, "^nfqlua: %-%-max%-len must be a number" },
		{ "bad sock-len", good .. " --queue 1 --sock-len 10", 2, "^nfqlua: %-%-sock%-len must be a number from 4096" },
		{ "bad fallback", good .. " --queue 1 --fallback maybe", 2, "^nfqlua: %-%-fallback must be 'accept' or 'drop'" },
		{ "two scripts", good .. " " .. good .. " --queue 1", 2, "^nfqlua: unexpected argument" },
		{ "empty pidfile", good .. " --queue 1 --pidfile ''", 2, "^nfqlua: %-%-pidfile needs a path" },
		{ "bad log level", good .. " --queue 1 --log-level loud", 2,
			"^nfqlua: %-%-log%-level must be error, warn, info or debug, got 'loud'" },
		{ "bad memory limit", good .. " --queue 1 --lua-mem-limit 1G", 2, "^nfqlua: %-%-lua%-mem%-limit must be a number" },
		{ "zero timeout", good .. " --queue 1 --script-timeout 0", 2,
			"^nfqlua: %-%-script%-timeout must be a number from 1" },
		{ "bad hook", "--replay x.pcap " .. good .. " --hook sideways", 2, "^nfqlua: %-%-hook must be prerouting, input" },
		{ "negative mark", "--replay x.pcap " .. good .. " --mark -1", 2, "^nfqlua: %-%-mark must be a number" },
		{ "replay without file", good .. " --replay", 2, "^nfqlua: option '%-%-replay' needs a value" },
		{ "queue range backwards", good .. " --queue 5-2", 2, "^nfqlua: %-%-queue A%-B needs A <= B" },
		{ "a repeated flag", good .. " --queue 1 --queue 2", 2, "^nfqlua: %-%-queue is given twice: give it once", ran },
		{ "a repeated flag, short and long", good .. " -q 1 --queue 1", 2, "^nfqlua: %-%-queue is given twice", ran },
		{ "a repeated choice", good .. " --queue 1 --mode meta --mode packet", 2, "^nfqlua: %-%-mode is given twice", ran },
		{ "a repeated switch", good .. " --queue 1 --no-gso --no-gso", 2, "^nfqlua: %-%-no%-gso is given twice", ran },
		{ "--hook without --replay, even the default", good .. " --queue 1 --hook input", 2,
			"^nfqlua: %-%-hook has no effect without %-%-replay: %-%-out, %-%-hook and %-%-mark go with %-%-replay", ran },
		{ "--mark without --replay, even 0", good .. " --queue 1 --mark 0", 2,
			"^nfqlua: %-%-mark has no effect without %-%-replay", ran },
		{ "--out with --check", good .. " --check --out kept.pcap", 2,
			"^nfqlua: %-%-out has no effect without %-%-replay" },
		{ "--check with --replay", "--replay x.pcap " .. good .. " --check", 2,
			"^nfqlua: %-%-check has no effect with %-%-replay: leave it out" },
		{ "an empty capture name", good .. " --replay ''", 2, "^nfqlua: %-%-replay needs a capture file" },
		{ "unreadable script", "/nonexistent/filter.lua --queue 1", 1,
			"^nfqlua: cannot read script '/nonexistent/filter.lua': No such file or directory$" },
	}
	for _, c in ipairs(cases) do
		it("rejects " .. c[1], function()
			-- Where an older nfqlua took the line and ran, it must not bind a queue of the host's.
			local rc, out = H.run_nfqlua(c[2], c[5])
			assert.equal(c[3], rc)
			assert.matches(c[4], one_line(out))
		end)
	end

	it("refuses every flag --replay does not use, naming it", function()
		for _, flag in ipairs { "--queue 1", "-q 1", "--pidfile x.pid", "--max-len 10", "--sock-len 8192",
			"--fail-open", "--no-gso", "--uid-gid", "--secctx" } do
			local rc, out = H.run_nfqlua("--replay x.pcap " .. good .. " " .. flag)
			assert.equal(2, rc, flag)
			local name = flag == "-q 1" and "queue" or flag:match("^%-%-([%w-]+)")
			assert.matches("^nfqlua: %-%-" .. name:gsub("%-", "%%-") .. " has no effect with %-%-replay: leave it out",
				one_line(out))
		end
	end)

	it("refuses with --check every flag but those that affect loading and logging", function()
		for _, flag in ipairs { "--queue 1", "--pidfile x.pid", "--mode meta", "--range 100", "--fallback drop",
			"--max-len 10", "--sock-len 8192", "--fail-open", "--no-gso", "--conntrack", "--uid-gid",
			"--secctx" } do
			local rc, out = H.run_nfqlua(good .. " --check " .. flag)
			assert.equal(2, rc, flag)
			assert.matches("^nfqlua: %-%-" .. flag:match("^%-%-([%w-]+)"):gsub("%-", "%%-")
				.. " has no effect with %-%-check: leave it out", one_line(out))
		end
		local rc, out = H.run_nfqlua(good .. " --check --lua-mem-limit 16777216 --script-timeout 100"
			.. " --log-level warn -v -v")
		assert.equal(0, rc, out)
		assert.equal(good .. ": ok", one_line(out))
	end)

	it("takes every flag --replay uses, and -v more than once", function()
		-- A capture with no packets: the pcap header alone.
		local empty = H.tmpfile("\212\195\178\161\2\0\4\0" .. ("\0"):rep(8) .. "\255\255\0\0\101\0\0\0", ".pcap")
		local rc, out = H.run_nfqlua("--replay " .. empty .. " " .. good .. " --mode meta --range 100 --fallback drop"
			.. " --conntrack --lua-mem-limit 16777216 --script-timeout 100 --out " .. H.tmpfile()
			.. " --hook output --mark 7 --log-level warn -v -v")
		assert.equal(0, rc, out)
		assert.matches("^replayed 0 packets", one_line(out))
	end)

	it("reports a syntax error with its line, in --check and at start", function()
		local bad = H.tmpfile("return function(pkt)\n\tpkt:accept(\nend\n", ".lua")
		for _, args in ipairs { "--check", "--queue 1" } do
			local rc, out = H.run_nfqlua(bad .. " " .. args)
			assert.equal(1, rc)
			assert.matches("^nfqlua: " .. bad:gsub("%p", "%%%0") .. ":3: ", one_line(out))
		end
	end)

	it("reports an error raised while the script loads, with its line", function()
		local bad = H.tmpfile("local x = 1\nerror('no config file')\n", ".lua")
		local rc, out = H.run_nfqlua(bad .. " --check")
		assert.equal(1, rc)
		assert.matches(":2: no config file$", one_line(out))
	end)

	it("reports a script that returns the wrong thing", function()
		for text, msg in pairs {
			["return 42"] = "must return a function or a table with on_packet, but returned number",
			["return {}"] = "the table the script returns has no on_packet function",
			["return { on_packet = print, on_stop = 1 }"] = "on_stop must be a function, got number",
			["return { on_packet = print, on_timer = 'soon' }"] = "on_timer must be a function, got string",
			["return { on_packet = print, on_timer = print, timer_interval = 0 }"] =
				"timer_interval must be a number of seconds, at least 0.001, got 0",
		} do
			local bad = H.tmpfile(text, ".lua")
			local rc, out = H.run_nfqlua(bad .. " --check")
			assert.equal(1, rc)
			assert.matches(msg, one_line(out), 1, true)
		end
	end)

	it("accepts a good script with --check", function()
		local rc, out = H.run_nfqlua(good .. " --check")
		assert.equal(0, rc)
		assert.equal(good .. ": ok", one_line(out))
	end)

	it("checks every example script", function()
		for name in H.sh("ls " .. H.root .. "/scripts/examples/*.lua"):gmatch("[^\n]+") do
			local rc, out = H.run_nfqlua(name .. " --check")
			assert.equal(0, rc, out)
		end
	end)

	it("prints its version and help", function()
		local rc, out = H.run_nfqlua("--version")
		assert.equal(0, rc)
		assert.matches("^nfqlua %d+%.%d+%.%d+", out)
		rc, out = H.run_nfqlua("--help")
		assert.equal(0, rc)
		assert.matches("usage: nfqlua SCRIPT %-%-queue N", out)
	end)
end)

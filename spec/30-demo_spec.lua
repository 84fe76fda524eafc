-- `make demo` itself: in a few seconds it must show a drop by content, a
-- rewrite seen at the receiver, a reload under traffic that loses nothing
-- (with the counts), the counters line, and leave nothing behind.
local H = require "helpers.net"

describe("make demo #kernel", function()
	it("shows a drop, a rewrite, a lossless reload and the counters, then cleans up", function()
		local started = H.now()
		local out = H.sh("cd " .. H.root .. " && make -s demo")
		local took = H.now() - started
		assert.matches('sent 3 to 127.0.0.1:9999: "hello" "top secret" "world"\n', out, 1, true)
		assert.matches('received 2: "hello v1" "world v1"\n', out, 1, true)
		assert.matches("reloaded [^\n]*filter%.lua: version 2 runs now", out)
		assert.matches("received 2000: 0 lost, 0 duplicated, 0 out of order\n", out, 1, true)
		local v1, v2 = out:match('arrived (%d+) as "N v1", (%d+) as "N v2"\n')
		assert.truthy(v1, "both versions handled part of the traffic:\n" .. out)
		assert.equal(2000, tonumber(v1) + tonumber(v2))
		local counters = "received=2003 accepted=2002 dropped=1 repeated=0 requeued=0 fallback=0 script_errors=0 "
			.. "script_timeouts=0 verdict_errors=0 enobufs=0 sent=0 send_errors=0 reloads=1 reload_failures=0 version=2 "
			.. "kernel_queue_dropped=0 kernel_user_dropped=0"
		assert.matches("== 3. the counters (SIGUSR1)\n   nfqlua: info: queue 1: " .. counters, out, 1, true)
		-- The demo takes about 3 s; the bound is generous for a loaded machine.
		assert.is_true(took < 30, ("make demo took %.1f s"):format(took))
		assert.is_nil(H.sh("ip netns list"):find("nfqlua-demo", 1, true))
		assert.equal("", H.sh("pgrep -f '[n]fqlua /tmp/tmp[.][^ ]*/filter.lua' || true"))
	end)
end)

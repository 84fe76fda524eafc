-- Hot reload and the daemon's lifecycle, with real traffic: nothing lost,
-- nothing duplicated, nothing verdicted by the swap itself.
local H = require "helpers.net"
local nfq = require "nfq"

-- Write a script in place the way an editor would: a new file renamed over the old.
local function write_script(path, text)
	local f = assert(io.open(path .. ".new", "w"))
	f:write(text)
	f:close()
	assert(os.rename(path .. ".new", path))
end

-- Reloads the daemon has finished, well or not, according to its log.
local function reload_outcomes(d)
	local n = 0
	for _ in d:output():gmatch("reloaded ") do n = n + 1 end
	for _ in d:output():gmatch("reload of ") do n = n + 1 end
	return n
end

-- Version v writes its number into the first data byte and clears the UDP checksum.
local function tagging_script(v)
	return ([[
local tag = string.char(%d)
return function(pkt)
	local p = pkt:get_payload()
	local ihl = (p:byte(1) %% 16) * 4
	pkt:set_payload(p:sub(1, ihl + 6) .. "\0\0" .. tag .. p:sub(ihl + 10))
	pkt:accept()
end
]]):format(v)
end

local broken_scripts = {
	"return function(pkt\n",
	"error('broken while loading')\n",
	"return 42\n",
	"return { on_packet = function(pkt) pkt:drop() end, on_start = function() error('cannot start') end }\n",
}

describe("hot reload #kernel", function()
	local d, script
	H.isolated_tests()
	before_each(function() script = H.tmpfile("", ".lua") end)
	after_each(function() os.remove(script) end)

	local function start(text, args)
		write_script(script, text)
		d = H.daemon(script .. " --queue 1 " .. (args or ""))
		H.wait_queue_ready(1)
	end

	local function reload_and_wait()
		local outcomes = reload_outcomes(d)
		d:signal("HUP")
		H.wait_for(function() return reload_outcomes(d) > outcomes end, 5, "the reload to finish")
	end

	it("swaps versions under load without losing, duplicating or reordering a packet", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 6100 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 6100), H.udp()
		start(tagging_script(1))
		local total, per_step = 12000, 240
		local got, order = {}, {}
		local function drain()
			while true do
				local data = rx:recv(0)
				if not data then return end
				local seq = tonumber(data:sub(2))
				got[seq] = (got[seq] or 0) + 1
				order[#order + 1] = { seq = seq, version = data:byte(1) }
			end
		end
		local version, broken, pending_hup = 1, 0, nil
		local t0 = H.now()
		for seq = 1, total do
			tx:sendto("\0" .. seq, "127.0.0.1", 6100)
			if seq % 20 == 0 then
				drain()
				-- about 4000 packets per second
				local ahead = seq / 4000 - (H.now() - t0)
				if ahead > 0 then H.sleep(ahead) end
			end
			if seq % per_step == 0 then
				if pending_hup then pending_hup() end
				local step = seq / per_step
				if step % 2 == 1 then
					version = version + 1
					write_script(script, tagging_script(version))
				else
					broken = broken + 1
					write_script(script, broken_scripts[(broken - 1) % #broken_scripts + 1])
				end
				local outcomes = reload_outcomes(d)
				d:signal("HUP")
				pending_hup = function()
					H.wait_for(function()
						drain()
						return reload_outcomes(d) > outcomes
					end, 5, "reload after packet " .. seq)
				end
			end
		end
		pending_hup()
		-- The last reload (of a broken script) is done: the last good version
		-- runs, and handles a tail, however slowly the reloads went.
		local sent = total + 40
		for seq = total + 1, sent do tx:sendto("\0" .. seq, "127.0.0.1", 6100) end
		H.wait_for(function() drain() return #order >= sent end, 10, "every packet to arrive")
		drain()

		assert.equal(sent, #order)
		for seq = 1, sent do
			assert.equal(1, got[seq], "packet " .. seq)
		end
		local last_version, versions_seen = 0, {}
		for i, p in ipairs(order) do
			assert.equal(i, p.seq, "packets arrive in order")
			assert.is_true(p.version >= last_version, "versions never go backwards")
			last_version = p.version
			versions_seen[p.version] = true
		end
		assert.is_true(version >= 20)
		assert.is_true(broken >= 20)
		assert.is_true(versions_seen[version], "the last good version handled traffic")
		assert.is_true(last_version == version)

		d:signal("USR1")
		d:wait_output("version=" .. version)
		local out = d:output()
		assert.matches(("reloads=%d reload_failures=%d"):format(version - 1, broken), out, 1, true)
		assert.matches("fallback=0 ", out, 1, true)
		assert.matches("kernel_queue_dropped=0 kernel_user_dropped=0", out, 1, true)
		assert.matches("reload of " .. script .. " failed, version %d+ keeps running: "
			.. script:gsub("%p", "%%%0") .. ":2:", out)
		assert.matches("broken while loading", out, 1, true)
		assert.matches("but returned number", out, 1, true)
		assert.matches("on_start failed: ", out, 1, true)
	end)

	it("hands packets held by the old version to the new one", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 6101 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 6101), H.udp()
		local pairing = [[
local held
return function(pkt)
	if held then
		pkt:accept()
		held:accept()
		held = nil
		print("released")
	else
		held = pkt:retain()
		print("holding " .. pkt.id)
	end
end
]]
		start(pairing)
		tx:sendto("first", "127.0.0.1", 6101)
		d:wait_output("holding 1")
		write_script(script, pairing)
		reload_and_wait()
		assert.matches("1 held packets handed to it", d:output(), 1, true)
		assert.is_nil(rx:recv(0.2), "still held after the reload")
		tx:sendto("second", "127.0.0.1", 6101)
		assert.same({ "second", "first" }, rx:recv_all(0.3))
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.matches("fallback=0 ", d:output(), 1, true)
	end)

	it("carries state from on_reload to the next on_start", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 6102 -j NFQUEUE --queue-num 1")
		local tx = H.udp()
		local counter = [[
local nfq = require "nfq"
local count = 0
return {
	on_start = function(state)
		count = state and state.count or 0
		print("starting at " .. count .. (state and (" from " .. state.nested.name) or ""))
	end,
	on_packet = function(pkt)
		count = count + 1
		print("count " .. count .. " received " .. nfq.stats().received)
		pkt:accept()
	end,
	on_reload = function() return { count = count, nested = { name = "v" .. count } } end,
}
]]
		start(counter)
		for i = 1, 3 do tx:sendto("a" .. i, "127.0.0.1", 6102) end
		d:wait_output("count 3 received 3")
		reload_and_wait()
		d:wait_output("starting at 3 from v3")
		for i = 1, 2 do tx:sendto("b" .. i, "127.0.0.1", 6102) end
		d:wait_output("count 5 received 5")
		reload_and_wait()
		tx:sendto("c", "127.0.0.1", 6102)
		d:wait_output("count 6 received 6")
	end)

	it("keeps the running version when the script is deleted or fails on_start", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 6103 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 6103), H.udp()
		start("return function(pkt) pkt:accept() end")
		os.remove(script)
		reload_and_wait()
		write_script(script, "return { on_packet = function(p) p:drop() end, on_start = function() error('nope') end }")
		reload_and_wait()
		d:signal("USR1")
		tx:sendto("still flowing", "127.0.0.1", 6103)
		assert.equal("still flowing", rx:recv(1))
		local out = d:output()
		assert.matches("reload of " .. script .. " failed, version 1 keeps running: cannot open", out, 1, true)
		assert.matches("nope", out, 1, true)
		d:wait_output("reload_failures=2 version=1")
	end)

	it("stops at once on a second SIGINT during the drain", function()
		start("return { on_packet = function(p) p:accept() end, on_stop = function() print('stuck') while true do end end }")
		d:signal("INT")
		d:wait_output("stuck")
		d:signal("INT")
		assert.equal(130, d:wait())
		assert.matches("second signal during the drain", d:output(), 1, true)
	end)

	it("writes a pidfile and removes it at exit", function()
		local pidfile = H.tmpfile()
		os.remove(pidfile)
		start("return function(p) p:accept() end", "--pidfile " .. pidfile .. " --log-level warn")
		H.wait_for(function() return H.read_file(pidfile) end, 5, "the pidfile")
		assert.equal(d.pid, tonumber(H.read_file(pidfile)))
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.is_nil(H.read_file(pidfile))
		assert.is_nil(d:output():find("info:", 1, true), "--log-level warn hides info lines")
	end)
end)

describe("callback swap in library mode #kernel", function()
	before_each(function() H.fresh_netns() end)

	it("takes effect between run(false) calls, and held packets stay valid", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 6104 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 6104), H.udp()
		local q = assert(nfq.new())
		finally(function() q:close() end)
		local held, handled_by = nil, {}
		assert(q:bind(1, function(pkt)
			handled_by[#handled_by + 1] = "v1"
			held = pkt:retain()
		end))
		H.wait_queue_ready(1)
		tx:sendto("one", "127.0.0.1", 6104)
		H.pump(q, function() return held end)
		q:set_callback(function(pkt)
			handled_by[#handled_by + 1] = "v2"
			pkt:accept()
			held:accept()
		end)
		tx:sendto("two", "127.0.0.1", 6104)
		H.pump(q, function() return #handled_by == 2 end)
		assert.same({ "v1", "v2" }, handled_by)
		assert.same({ "two", "one" }, rx:recv_all(0.3))
		assert.equal(0, q:stats().fallback)
	end)
end)

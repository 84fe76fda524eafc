-- OpenResty: scripts/examples/openresty/ in Debian's nginx with its Lua
-- module, in a fresh namespace. Worker 0 filters the queued UDP; HTTP, served
-- by any worker, changes the blocked ports and reads the counters.
local H = require "helpers.net"

local NGINX = "/usr/sbin/nginx"
local MODULES = { "/usr/lib/nginx/modules/ndk_http_module.so", "/usr/lib/nginx/modules/ngx_http_lua_module.so" }
local QUEUE, HTTP_PORT, BLOCKED, OPEN = 7, 8080, 5555, 5556
local example = H.root .. "/scripts/examples/openresty"

local function missing_file()
	for _, path in ipairs({ NGINX, MODULES[1], MODULES[2] }) do
		local f = io.open(path)
		if not f then return path end
		f:close()
	end
end

--- One HTTP/1.0 GET to nginx in this namespace: the status and the body.
local function get(path)
	local s = H.tcp_connect("127.0.0.1", HTTP_PORT)
	s:send(("GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n"):format(path))
	local chunks = {}
	while true do
		local chunk = s:recv(5)
		if not chunk then
			s:close()
			error("nginx did not answer GET " .. path)
		end
		if chunk == "" then break end
		chunks[#chunks + 1] = chunk
	end
	s:close()
	local status, body = table.concat(chunks):match("^HTTP/1%.%d (%d+).-\r\n\r\n(.*)$")
	return tonumber(status), body
end

--- /stats as a table of numbers (and the blocked ports as text), or nil
-- while nginx is not up or the queue not bound.
local function stats()
	local ok, status, body = pcall(get, "/stats")
	if not ok or status ~= 200 then return nil end
	local t = { blocked = body:match('"blocked":%[(.-)%]') }
	for k, v in body:gmatch('"([%w_]+)":(%d+)') do t[k] = tonumber(v) end
	return t
end

local function wait_stats(cond, what)
	return H.wait_for(function()
		local s = stats()
		return s and cond(s) and s
	end, 10, what)
end

--- Lines of an nginx log above notice level: warnings and errors.
local function problems(log)
	local lines = {}
	for line in log:gmatch("[^\n]+") do
		if line:find("^%S+ %S+ %[%a+%]") and not line:find("[notice]", 1, true) then
			lines[#lines + 1] = line
		end
	end
	return lines
end

--- nginx with the example configuration, under a new prefix directory that
-- links to it; nfq comes from this checkout, unless lua_paths says otherwise.
local function start_nginx(lua_paths)
	local dir = H.sh("mktemp -d"):gsub("%s+$", "")
	H.sh(("ln -s %s/nginx.conf %s/nfq_filter.lua %s/"):format(example, example, dir))
	local env = ("NFQ_QUEUE=%d "):format(QUEUE)
		.. (lua_paths or ('LUA_PATH="%s/lua/?.lua;;" LUA_CPATH="%s/lua/?.so;;"'):format(H.root, H.root))
	-- setsid: the master leads a process group, so that its workers can be
	-- killed with it if it does not stop.
	os.execute(("( sh -c 'echo $$ > %s/sh.pid; exec env %s setsid %s -p %s/ -c nginx.conf -g \"daemon off;\"' "
		.. "> %s/log 2>&1; echo $? > %s/rc ) &"):format(dir, env, NGINX, dir, dir, dir))
	local n = { dir = dir }
	n.pid = H.wait_for(function()
		local s = H.read_file(dir .. "/sh.pid")
		return s and tonumber(s:match("%d+"))
	end, 5, "nginx to start")
	function n.log() return H.read_file(dir .. "/log") or "" end
	function n.exited() return H.read_file(dir .. "/rc") end
	--- Stop gracefully (SIGQUIT), or kill the group; the log. Can be called twice.
	function n.stop()
		if not n.dir then return "" end
		if not n.exited() then
			os.execute("kill -QUIT " .. n.pid)
			pcall(H.wait_for, n.exited, 10, "nginx to exit")
		end
		os.execute("kill -KILL -" .. n.pid .. " 2>/dev/null")
		local log = n.log()
		os.execute("rm -rf " .. dir)
		n.dir = nil
		return log
	end
	return n
end

describe("OpenResty example #kernel", function()
	it("does not start, and says why, when nfq cannot be loaded or the queue cannot be bound", function()
		local missing = missing_file()
		if missing then
			pending(missing .. " is not installed (apt-get install nginx libnginx-mod-http-lua)")
			return
		end
		H.fresh_netns()
		local nginx = start_nginx("LUA_PATH=/nonexistent/?.lua LUA_CPATH=/nonexistent/?.so")
		finally(nginx.stop)
		assert.equal(1, tonumber(H.wait_for(nginx.exited, 10, "nginx to give up")))
		assert.matches("init_by_lua error: nfq_filter: cannot load the nfq module (module 'nfq' not found:); "
			.. "install nfqlua (make install), or from a checkout start nginx with LUA_PATH=", nginx.stop(), 1, true)

		local other = H.bound_queue(QUEUE, function(pkt) pkt:accept() end)
		finally(function() other:close() end)
		nginx = start_nginx()
		assert.equal(1, tonumber(H.wait_for(nginx.exited, 10, "nginx to give up")))
		assert.matches("init_by_lua error: nfq_filter: cannot bind queue " .. QUEUE .. " at start: queue " .. QUEUE
			.. " is already bound by another socket", nginx.stop(), 1, true)
	end)

	it("filters queued UDP in worker 0, blocks ports over HTTP, and keeps them across a reload", function()
		local missing = missing_file()
		if missing then
			pending(missing .. " is not installed (apt-get install nginx libnginx-mod-http-lua)")
			return
		end
		H.fresh_netns()
		-- Only this UDP goes through the queue; HTTP to nginx does not.
		H.sh(("iptables -A INPUT -p udp -d 127.0.0.1 -m multiport --dports %d,%d -j NFQUEUE --queue-num %d")
			:format(BLOCKED, OPEN, QUEUE))
		local rx_blocked, rx_open, tx = H.udp("127.0.0.1", BLOCKED), H.udp("127.0.0.1", OPEN), H.udp()
		local nginx = start_nginx()
		finally(nginx.stop)
		local first = H.wait_for(function()
			if nginx.exited() then error("nginx exited:\n" .. nginx.log()) end
			return stats()
		end, 10, "nginx to serve /stats with the queue bound")
		assert.equal(QUEUE, first.queue)
		assert.equal(0, first.received)
		-- The worker that publishes the counters holds the queue: the kernel
		-- gives a process's first netlink socket its pid as port id.
		assert.equal(first.pid, H.queue_info(QUEUE).portid)

		-- Sends one datagram to each port, then waits until the filter gave
		-- both their verdicts (delivery happens within the verdict): what
		-- is in the sockets then is all that will ever arrive.
		local sent = 0
		local function exchange(tag)
			tx:sendto(tag, "127.0.0.1", BLOCKED)
			tx:sendto(tag, "127.0.0.1", OPEN)
			sent = sent + 2
			local s = wait_stats(function(s) return s.received == sent end, "the filter to see " .. tag)
			assert.equal(tag, rx_open:recv(0))
			return rx_blocked:recv(0), s
		end

		assert.equal("one", (exchange("one")))

		assert.same({ 400, "port must be an integer from 1 to 65535\n" }, { get("/block?port=http") })
		assert.same({ 200, "blocked " .. BLOCKED .. "\n" }, { get("/block?port=" .. BLOCKED) })
		assert.is_nil((exchange("two")))
		local got, s = exchange("three")
		assert.is_nil(got)
		assert.same({ received = 6, accepted = 4, dropped = 2, fallback = 0, script_errors = 0 },
			{ received = s.received, accepted = s.accepted, dropped = s.dropped, fallback = s.fallback,
				script_errors = s.script_errors })
		assert.equal(tostring(BLOCKED), s.blocked)
		-- Worker 0's nfq.metric counters, published with the stats.
		local status, metrics = get("/metrics")
		assert.equal(200, status)
		assert.matches('\nnfq_filter_packets_total{verdict="drop"} 2\n', metrics, 1, true)
		assert.matches('\nnfq_filter_packets_total{verdict="accept"} 4\n', metrics, 1, true)
		-- Only worker 0 tried to bind, and the filter raised nothing.
		assert.same({}, problems(nginx.log()))

		-- nginx -s reload: the new worker 0 binds once the old one let go,
		-- and the blocked ports survive in the shared dict.
		os.execute("kill -HUP " .. nginx.pid)
		s = wait_stats(function(st) return st.pid ~= first.pid end, "a new worker 0 to bind the queue")
		assert.equal(s.pid, H.queue_info(QUEUE).portid)
		assert.equal(tostring(BLOCKED), s.blocked)
		sent = 0 -- the new worker's queue counts from zero
		got = exchange("four")
		assert.is_nil(got)

		assert.same({ 200, "unblocked " .. BLOCKED .. "\n" }, { get("/unblock?port=" .. BLOCKED) })
		got, s = exchange("five")
		assert.equal("five", got)
		assert.same({ 4, 3, 1 }, { s.received, s.accepted, s.dropped })
		assert.equal("", s.blocked)

		local log = nginx.stop()
		assert.matches("nfq_filter: queue " .. QUEUE .. " unbound, the worker is exiting", log, 1, true)
		-- The new worker 0 may have found the queue still held by the old one.
		for _, line in ipairs(problems(log)) do
			assert.matches("cannot bind queue " .. QUEUE .. ": queue " .. QUEUE .. " is already bound by another socket",
				line, 1, true)
		end
	end)
end)

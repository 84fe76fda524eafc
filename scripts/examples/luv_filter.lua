-- A queue inside a libuv loop (Debian: lua-luv), beside a timer and signal
-- handlers: drops UDP to one port, accepts the rest, prints the counters
-- every second.
--   NFQ_DROP_PORT=5555 luajit scripts/examples/luv_filter.lua [queue]
-- From a checkout, add LUA_PATH='lua/?.lua;;' LUA_CPATH='lua/?.so;;' (keep
-- the ';;': luv is found through the default path).
-- nfqlua can run this file too, as an ordinary filter script.
local nfq = require "nfq"

local drop_port = tonumber(os.getenv("NFQ_DROP_PORT")) or 5555

local function filter(pkt)
	local udp = pkt:udp()
	if udp and udp.dport == drop_port then
		pkt:drop()
	else
		pkt:accept()
	end
end

local function counters(q)
	local s = q:stats()
	return ("received=%d accepted=%d dropped=%d fallback=%d"):format(s.received, s.accepted, s.dropped, s.fallback)
end

local function main(queue_num)
	local uv = require "luv"
	-- The counters reach a pipe or a log file as they are printed.
	io.stdout:setvbuf("line")
	local q = assert(nfq.new())
	local bound, bind_err = q:bind(queue_num, filter)
	if not bound then
		io.stderr:write("luv_filter: ", bind_err, "\n")
		return 1
	end

	local poll, timer = uv.new_poll(q:get_fd()), uv.new_timer()
	local sigint, sigterm = uv.new_signal(), uv.new_signal()
	local status = 0

	-- Closing every handle lets uv.run() return.
	local function stop(why)
		for _, handle in ipairs { poll, timer, sigint, sigterm } do handle:close() end
		-- Packets that arrived since the last readable event go through the
		-- filter: unbind would give them the fallback verdict (accept).
		q:run(false)
		local unbound, unbind_err = q:unbind()
		if unbound then print(("queue %d unbound: %s"):format(queue_num, counters(q))) end
		q:close()
		why = why or unbind_err
		if why then
			io.stderr:write("luv_filter: ", why, "\n")
			status = 1
		end
	end

	-- run(false) reads until the socket is empty, so every readable event
	-- is answered in full and no batch waits for the next packet.
	poll:start("r", function(poll_err)
		if poll_err then return stop(poll_err) end
		local ok, run_err = q:run(false)
		if not ok then stop(run_err) end
	end)
	timer:start(1000, 1000, function()
		print(("queue %d: %s"):format(queue_num, counters(q)))
	end)
	sigint:start("sigint", function() stop() end)
	sigterm:start("sigterm", function() stop() end)

	uv.run()
	return status
end

-- Run as a program; nfqlua and require get the filter instead.
if arg and arg[0] and debug.getinfo(1, "S").source == "@" .. arg[0] then
	os.exit(main(tonumber(arg[1] or 1)))
end
return filter

-- A queue inside a cqueues controller (Debian: lua-cqueues), beside a timer
-- and signal handling: drops UDP to one port, accepts the rest, prints the
-- counters every second.
--   NFQ_DROP_PORT=5555 luajit scripts/examples/cqueues_filter.lua [queue]
-- From a checkout, add LUA_PATH='lua/?.lua;;' LUA_CPATH='lua/?.so;;' (keep
-- the ';;': cqueues is found through the default paths).
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
	local cqueues = require "cqueues"
	local condition = require "cqueues.condition"
	local signal = require "cqueues.signal"
	-- The counters reach a pipe or a log file as they are printed.
	io.stdout:setvbuf("line")
	local q = assert(nfq.new())
	local bound, bind_err = q:bind(queue_num, filter)
	if not bound then
		io.stderr:write("cqueues_filter: ", bind_err, "\n")
		return 1
	end

	-- cqueues takes any table with pollfd and events as a pollable.
	local queue_fd = { pollfd = q:get_fd(), events = "r" }
	-- signalfd sees only blocked signals.
	signal.block(signal.SIGINT, signal.SIGTERM)
	local signals = signal.listen(signal.SIGINT, signal.SIGTERM)
	-- Wakes the other coroutines at once when a signal ends the loop.
	local stopping = condition.new()
	local running = true
	local cq = cqueues.new()

	cq:wrap(function()
		while running do
			-- run(false) reads until the socket is empty, so every readable
			-- event is answered in full and no batch waits for the next packet.
			if cqueues.poll(queue_fd, stopping) == queue_fd then
				assert(q:run(false))
			end
		end
		-- Packets that arrived since the last readable event go through the
		-- filter: unbind would give them the fallback verdict (accept).
		assert(q:run(false))
		assert(q:unbind())
		print(("queue %d unbound: %s"):format(queue_num, counters(q)))
		-- The controller must forget the fd before it is closed.
		cqueues.cancel(queue_fd.pollfd)
		q:close()
	end)
	cq:wrap(function()
		while running do
			if cqueues.poll(stopping, 1) ~= stopping then
				print(("queue %d: %s"):format(queue_num, counters(q)))
			end
		end
	end)
	cq:wrap(function()
		signals:wait()
		running = false
		stopping:signal()
	end)

	local ok, err = cq:loop()
	if not ok then
		io.stderr:write("cqueues_filter: ", tostring(err), "\n")
		-- A failed coroutine left the queue bound: close gives the packets
		-- still queued the fallback verdict rather than leaving the kernel
		-- to drop them.
		q:close()
		return 1
	end
	return 0
end

-- Run as a program; nfqlua and require get the filter instead.
if arg and arg[0] and debug.getinfo(1, "S").source == "@" .. arg[0] then
	os.exit(main(tonumber(arg[1] or 1)))
end
return filter

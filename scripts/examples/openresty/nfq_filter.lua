--- nfq_filter: a UDP port filter on an NFQUEUE inside nginx's Lua module.
-- Worker 0 binds the queue and drains it from a timer; the HTTP handlers, in
-- any worker, change the blocked ports through the lua_shared_dict "nfq".
-- See nginx.conf next to this file.
--
-- Shared dict keys: "port:N" (N is blocked), "version" (bumped by every
-- change), "applied" (the version the filter uses), "stats" (JSON counters,
-- written by the worker that holds the queue), "metrics" (the same worker's
-- nfq.metric text, for Prometheus), "checked" (the master could bind the
-- queue at start).
local found, nfq = pcall(require, "nfq")
if not found then
	error("nfq_filter: cannot load the nfq module (" .. tostring(nfq):match("^[^\n]*")
		.. "); install nfqlua (make install), or from a checkout start nginx with "
		.. "LUA_PATH='/abs/path/to/nfqlua/lua/?.lua;;' LUA_CPATH='/abs/path/to/nfqlua/lua/?.so;;'", 0)
end

local ngx = ngx
local log, ERR, NOTICE = ngx.log, ngx.ERR, ngx.NOTICE
local timer_at, sleep, now, exiting = ngx.timer.at, ngx.sleep, ngx.now, ngx.worker.exiting
local tonumber, tostring, type, pcall, ipairs, pairs = tonumber, tostring, type, pcall, ipairs, pairs
local concat, sort = table.concat, table.sort

local dict = ngx.shared.nfq
if not dict then
	error("nfq_filter: add `lua_shared_dict nfq 1m;` to the http block", 2)
end

-- While the queue cannot be bound (another socket holds it, e.g. the old
-- worker 0 during `nginx -s reload`), try again this often: packets that
-- match the rule are dropped by the kernel while nobody is bound.
local RETRY = 0.1
-- How long /block and /unblock wait for the filter to use the change.
local APPLY_TIMEOUT = 1
-- Counters go to the dict at most this often: q:stats() reads /proc.
local PUBLISH_EVERY = 0.1
-- Batches (up to 64 packets each) per turn: under a flood, worker 0 still
-- serves its HTTP requests and timers between turns.
local MAX_BATCHES = 16

local _M = {}

-- The filter's view of the shared dict, in worker 0 only: the per-packet
-- path reads this table, never the dict.
local blocked = {}
local seen_version
local handled = 0

-- Counted in worker 0 (its own process memory), published to the dict.
local verdicts = nfq.metric.counter("nfq_filter_packets_total", "Packets the filter saw, by verdict.", { "verdict" })
local dropped, accepted = verdicts:series("drop"), verdicts:series("accept")

local function on_packet(pkt)
	handled = handled + 1
	local udp = pkt:udp()
	if udp and blocked[udp.dport] then
		dropped:inc()
		pkt:drop()
	else
		accepted:inc()
		pkt:accept()
	end
end

--- Reload the blocked set when the version changed; one dict read otherwise.
local function refresh()
	-- The version is read before the keys: a change made meanwhile bumps it
	-- again, so the next drain reads the keys once more.
	local version = dict:get("version") or 0
	if version == seen_version then return end
	local set = {}
	for _, key in ipairs(dict:get_keys(0)) do
		local port = tonumber(key:match("^port:(%d+)$"))
		if port then set[port] = true end
	end
	blocked, seen_version = set, version
	dict:set("applied", version)
end

local function publish(q, queue_num)
	local s = q:stats()
	local names = {}
	for k in pairs(s) do names[#names + 1] = k end
	sort(names)
	local fields = { ('"queue":%d,"pid":%d,"version":%d'):format(queue_num, ngx.worker.pid(), seen_version) }
	for _, k in ipairs(names) do
		fields[#fields + 1] = ('"%s":%d'):format(k, s[k])
	end
	local ports = {}
	for port in pairs(blocked) do ports[#ports + 1] = port end
	sort(ports)
	fields[#fields + 1] = '"blocked":[' .. concat(ports, ",") .. "]"
	dict:set("stats", "{" .. concat(fields, ",") .. "}\n")
	dict:set("metrics", (nfq.metric.render()))
end

local last_bind_error
local serve

local function start(delay, opts)
	local ok, err = timer_at(delay, serve, opts)
	if not ok then
		log(ERR, "nfq_filter: cannot start the queue timer, queue ", opts.queue, " stays unbound: ", err)
	end
end

--- The timer behind worker 0: bind, then drain and sleep until nginx stops
-- the worker. A failed bind or a broken socket re-arms the timer.
function serve(premature, opts)
	if premature then return end
	local q, err = nfq.new()
	if q then
		local ok
		ok, err = q:bind(opts.queue, on_packet)
		if not ok then
			q:close()
			q = nil
		end
	end
	if not q then
		-- Once per distinct error: a retry every RETRY seconds would flood the log.
		if err ~= last_bind_error then
			log(ERR, "nfq_filter: cannot bind queue ", opts.queue, ": ", err, "; retrying every ", RETRY, " s")
			last_bind_error = err
		end
		start(RETRY, opts)
		return
	end
	last_bind_error = nil
	log(NOTICE, "nfq_filter: queue ", opts.queue, " bound, draining every ", opts.interval, " s")
	local published_handled, published_version, published_at = -1, nil, 0
	while not exiting() do
		refresh()
		local ok, ran, more = pcall(q.run, q, false, MAX_BATCHES)
		if not ok then
			-- The failing packet got the fallback verdict; the rest go on.
			log(ERR, "nfq_filter: ", ran)
		elseif not ran then
			err = more
			break
		end
		if (handled ~= published_handled or seen_version ~= published_version)
			and now() - published_at >= PUBLISH_EVERY then
			publish(q, opts.queue)
			published_handled, published_version, published_at = handled, seen_version, now()
		end
		-- A turn that hit MAX_BATCHES leaves packets waiting: only yield.
		sleep((ok and more) and 0 or opts.interval)
	end
	-- Stale counters go first: the next holder publishes only once it is
	-- bound, which needs this socket closed.
	dict:delete("stats")
	dict:delete("metrics")
	-- Unbinding gives packets still in the socket the fallback verdict now,
	-- instead of leaving them to the kernel when the socket goes.
	q:close()
	if err then
		log(ERR, "nfq_filter: queue ", opts.queue, " failed: ", err, "; binding it again")
		start(RETRY, opts)
	else
		log(NOTICE, "nfq_filter: queue ", opts.queue, " unbound, the worker is exiting")
	end
end

-- The options init() checked, for the workers, which inherit them.
local options

--- For init_by_lua, in the master: check the options and, at start (not on
-- a reload, when the old worker 0 holds the queue), bind the queue once and
-- let it go. A queue that cannot be bound (no CAP_NET_ADMIN, another
-- program holds it) stops nginx at start with the reason, instead of
-- workers that log and retry while the rule's packets go unfiltered.
-- opts.queue is the rule's --queue-num, opts.interval the pause between
-- drains in seconds.
function _M.init(opts)
	local queue, interval = opts.queue, opts.interval
	if type(queue) ~= "number" or queue < 0 or queue > 65535 or queue % 1 ~= 0 then
		error("nfq_filter: queue must be an integer from 0 to 65535, got " .. tostring(queue), 2)
	end
	if type(interval) ~= "number" or interval < 0.001 then
		error("nfq_filter: interval must be at least 0.001 s (nginx timers count milliseconds), got "
			.. tostring(interval), 2)
	end
	options = { queue = queue, interval = interval }
	-- The shared dict outlives a reload: the key says this is not the start.
	if dict:get("checked") then return end
	local q, err = nfq.new()
	local ok
	if q then
		ok, err = q:bind(queue, function(pkt) pkt:accept() end)
		q:close()
	end
	if not ok then
		error("nfq_filter: cannot bind queue " .. queue .. " at start: " .. tostring(err), 0)
	end
	dict:set("checked", true)
end

--- For init_worker_by_lua: worker 0 holds the queue that init() checked.
function _M.init_worker()
	if not options then
		error("nfq_filter: call init{ queue = N, interval = S } from init_by_lua first", 2)
	end
	-- A queue takes one socket: the other workers only serve HTTP.
	if ngx.worker.id() ~= 0 then return end
	start(0, options)
end

local function port_arg()
	local port = tonumber(ngx.var.arg_port)
	if port and port >= 1 and port <= 65535 and port % 1 == 0 then return port end
end

local function reply(status, text)
	ngx.status = status
	ngx.header.content_type = "text/plain"
	ngx.say(text)
end

--- Store a change, then wait until the filter uses it: once the response is
-- 200, every packet received afterwards sees the new set.
local function change(add)
	local port = port_arg()
	if not port then
		return reply(ngx.HTTP_BAD_REQUEST, "port must be an integer from 1 to 65535")
	end
	local key = "port:" .. port
	local ok, err
	if add then
		ok, err = dict:set(key, true)
	else
		ok, err = dict:delete(key)
	end
	local version
	if ok then
		version, err = dict:incr("version", 1, 0)
	end
	if not version then
		return reply(ngx.HTTP_INTERNAL_SERVER_ERROR, "shared dict nfq: " .. tostring(err))
	end
	local deadline = now() + APPLY_TIMEOUT
	while (dict:get("applied") or 0) < version do
		if now() >= deadline then
			return reply(ngx.HTTP_ACCEPTED, "stored; the filter has not applied it yet (is the queue bound?)")
		end
		sleep(0.001)
	end
	reply(ngx.HTTP_OK, (add and "blocked " or "unblocked ") .. port)
end

function _M.block() change(true) end
function _M.unblock() change(false) end

--- The counters worker 0 published, from whichever worker serves the request.
function _M.stats()
	local s = dict:get("stats")
	if not s then
		return reply(ngx.HTTP_SERVICE_UNAVAILABLE, "the queue is not bound yet")
	end
	ngx.header.content_type = "application/json"
	ngx.print(s)
end

--- Worker 0's metrics in Prometheus' text format, from whichever worker
-- serves the request. A new worker 0 (nginx -s reload) counts from zero,
-- which Prometheus reads as a counter reset.
function _M.metrics()
	local text = dict:get("metrics")
	if not text then
		return reply(ngx.HTTP_SERVICE_UNAVAILABLE, "the queue is not bound yet")
	end
	ngx.header.content_type = "text/plain; version=0.0.4; charset=utf-8"
	ngx.print(text)
end

return _M

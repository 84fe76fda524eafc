--- nfq.engine: the Lua half of the nfqlua daemon. C owns the queue, the
-- loop and the Lua state; it calls these functions through the C API.
local nfq = require "nfq"

local type, error, pairs, ipairs, tostring = type, error, pairs, ipairs, tostring
local is_callable = nfq._is_callable

local _M = { _VERSION = nfq._VERSION }

local known_hooks = { "on_packet", "on_start", "on_stop", "on_reload", "on_timer" }
local is_known_hook = {}
for _, name in ipairs(known_hooks) do is_known_hook[name] = true end

-- package.path without entries relative to the working directory.
local function without_cwd(path)
	local kept = {}
	for entry in path:gmatch("[^;]+") do
		if entry:sub(1, 2) ~= "./" then kept[#kept + 1] = entry end
	end
	return table.concat(kept, ";")
end

-- A root script may load only files root alone can change: every file that
-- require, loadfile or dofile would read is checked first (check_owner
-- returns true or nil, err), and nothing is searched in the working
-- directory.
local function check_every_load(check_owner)
	local loadlib, searchpath, loadfile = package.loadlib, package.searchpath, loadfile
	local function checked(file)
		local ok, err = check_owner(file)
		if not ok then error(err, 0) end
		return file
	end
	package.path = without_cwd(package.path)
	package.cpath = without_cwd(package.cpath)
	package.loaders[2] = function(name)
		local file, err = searchpath(name, package.path)
		if not file then return err end
		return assert(loadfile(checked(file)))
	end
	package.loaders[3] = function(name)
		local file, err = searchpath(name, package.cpath)
		if not file then return err end
		local symbol = "luaopen_" .. name:gsub("^[^-]*%-", ""):gsub("%.", "_")
		return assert(loadlib(checked(file), symbol))
	end
	package.loaders[4] = nil
	_G.loadfile = function(file, ...)
		if file ~= nil then checked(file) end
		return loadfile(file, ...)
	end
	_G.dofile = function(file)
		return assert(_G.loadfile(file))()
	end
end

--- Load a filter script: it returns the callback, or a table with
-- on_packet and optional on_start, on_stop, on_reload and on_timer. Modules
-- next to the script can be required. check_owner is given when the script
-- runs as root (see check_every_load). Returns the hooks and a warning, or
-- raises one-line errors.
function _M.load(path, check_owner)
	local dir = path:match("^(.*)/[^/]*$") or "."
	if dir == "" then dir = "/" end
	if check_owner then check_every_load(check_owner) end
	package.path = dir .. "/?.lua;" .. package.path
	local chunk, err = loadfile(path)
	if not chunk then
		error(err, 0)
	end
	local ret = chunk()
	if is_callable(ret) and type(ret) ~= "table" then
		return { on_packet = ret }
	end
	if type(ret) ~= "table" then
		error(("%s: the script must return a function or a table with on_packet, but returned %s"):format(path, type(ret)), 0)
	end
	if not is_callable(ret.on_packet) then
		error(("%s: the table the script returns has no on_packet function"):format(path), 0)
	end
	local unknown = {}
	for key, value in pairs(ret) do
		if type(key) == "string" and key:sub(1, 3) == "on_" and not is_known_hook[key] then
			unknown[#unknown + 1] = key
		elseif is_known_hook[key] and not is_callable(value) then
			error(("%s: %s must be a function, got %s"):format(path, key, type(value)), 0)
		end
	end
	local interval = ret.timer_interval
	if interval ~= nil and (type(interval) ~= "number" or interval < 0.001 or interval ~= interval) then
		error(("%s: timer_interval must be a number of seconds, at least 0.001, got %s")
			:format(path, tostring(interval)), 0)
	end
	local warning
	if #unknown > 0 then
		table.sort(unknown)
		warning = ("%s: the script's table has %s %s, which nfqlua never calls; the hooks are %s")
			:format(path, #unknown == 1 and "the key" or "the keys", table.concat(unknown, ", "),
				table.concat(known_hooks, ", "))
	end
	return ret, warning
end

--- The functions C calls: once per batch of packets received on the
-- queue, once per packet handed over by a reload, and on_timer every
-- timer_interval seconds (default 1) when the script has one.
function _M.attach(qptr, hooks)
	local queue = nfq._adopt(qptr, hooks.on_packet)
	nfq._set_send_queue(queue)
	local dispatch = queue._dispatch
	local on_timer = hooks.on_timer
	local recycle_buffers = nfq.recycle_buffers
	-- Packet buffers made in on_timer go back to the pool when it returns,
	-- as those of a packet callback do when it returns.
	return function() dispatch(queue) end,
		function(packet_ptr) queue:_redeliver(packet_ptr) end,
		on_timer and function()
			on_timer()
			recycle_buffers()
		end,
		on_timer and (hooks.timer_interval or 1) or 0
end

function _M.call_hook(hooks, name, ...)
	local hook = hooks[name]
	if hook then hook(...) end
end

--- What the script wants to hand to its next version: on_reload()'s table.
function _M.save_state(hooks)
	if not hooks.on_reload then return nil end
	local state = hooks.on_reload()
	if state ~= nil and type(state) ~= "table" then
		error("on_reload must return a table or nil, got " .. type(state), 0)
	end
	return state
end

--- nfqlua --replay: the offline driver (nfq.offline) over the engine's
-- offline queue and the capture that reader (src/nfq_replay.c) reads. Calls
-- into the script go through guarded_call, the engine's watchdog, once C
-- has set it.
function _M.run_offline(qptr, hooks, reader)
	require("nfq.offline").replay(qptr, hooks, reader, _M.guarded_call or pcall)
end

return _M

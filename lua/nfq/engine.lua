--- nfq.engine: the Lua half of the nfqlua daemon. C owns the queue, the
-- loop and the Lua state; it calls these functions through the C API.
local nfq = require "nfq"

local type, error = type, error
local is_callable = nfq._is_callable

local _M = { _VERSION = nfq._VERSION }

--- Load a filter script: it returns the callback, or a table with
-- on_packet and optional on_start, on_stop and on_reload. Raises one-line
-- errors.
function _M.load(path)
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
	for _, hook in ipairs { "on_start", "on_stop", "on_reload", "on_timer" } do
		if ret[hook] ~= nil and not is_callable(ret[hook]) then
			error(("%s: %s must be a function, got %s"):format(path, hook, type(ret[hook])), 0)
		end
	end
	local interval = ret.timer_interval
	if interval ~= nil and (type(interval) ~= "number" or interval < 0.001 or interval ~= interval) then
		error(("%s: timer_interval must be a number of seconds, at least 0.001, got %s")
			:format(path, tostring(interval)), 0)
	end
	return ret
end

--- The functions C calls: once per batch of packets received on the
-- queue, once per packet handed over by a reload, and on_timer every
-- timer_interval seconds (default 1) when the script has one.
function _M.attach(qptr, hooks)
	local queue = nfq._adopt(qptr, hooks.on_packet)
	local dispatch = queue._dispatch
	local on_timer = hooks.on_timer
	return function() dispatch(queue) end,
		function(packet_ptr) queue:_redeliver(packet_ptr) end,
		on_timer,
		on_timer and (hooks.timer_interval or 1) or 0
end

--- Offline engines (--replay): nfq.now() follows the capture's clock.
_M.set_now = nfq._set_now

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

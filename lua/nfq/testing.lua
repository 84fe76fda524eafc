--- nfq.testing: run filter scripts on packets built in a test, without a
-- kernel queue. Packets go through the same dispatch and verdict code as on
-- a real queue (an offline queue records the verdicts instead of sending).
--
--   local testing = require "nfq.testing"
--   local results = testing.run("filter.lua", {
--     testing.packet { proto = "udp", dst = "10.0.0.2", dport = 53, payload = "..." },
--   })
--   assert(results[1].verdict == "drop")
local ffi = require "ffi"
local bit = require "bit"
local nfq = require "nfq"
local engine = require "nfq.engine"

local C = nfq._C
local band, rshift = bit.band, bit.rshift

local _M = { _VERSION = nfq._VERSION }

-- The same limits as nfqlua --replay (src/nfq_core.h).
local MAX_REPEATS = C.NFQ_OFFLINE_MAX_REPEATS
local DRAIN_SECONDS = C.NFQ_OFFLINE_DRAIN_SECONDS

local verdict_names = { [0] = "drop", "accept", "stolen", "queue", "repeat", "stop" }
local protocols = { icmp = 1, tcp = 6, udp = 17, icmpv6 = 58 }

local function u16(n) return string.char(band(rshift(n, 8), 255), band(n, 255)) end
local function u32(n) return u16(band(rshift(n, 16), 0xffff)) .. u16(band(n, 0xffff)) end

local function ipv4_address(text)
	local a, b, c, d = text:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
	if not a then error("nfq.testing: not an IPv4 address: " .. tostring(text), 3) end
	return string.char(tonumber(a), tonumber(b), tonumber(c), tonumber(d))
end

local function ipv6_address(text)
	local head, tail = text:match("^(.-)::(.*)$")
	local groups = {}
	local function add(part, into)
		for g in part:gmatch("[^:]+") do into[#into + 1] = tonumber(g, 16) end
	end
	if head then
		local h, t = {}, {}
		add(head, h)
		add(tail, t)
		for _, g in ipairs(h) do groups[#groups + 1] = g end
		for _ = 1, 8 - #h - #t do groups[#groups + 1] = 0 end
		for _, g in ipairs(t) do groups[#groups + 1] = g end
	else
		add(text, groups)
	end
	if #groups ~= 8 then error("nfq.testing: not an IPv6 address: " .. tostring(text), 3) end
	local out = {}
	for i, g in ipairs(groups) do out[i] = u16(g) end
	return table.concat(out)
end

--- The bytes of an IPv4 or IPv6 packet with correct lengths and checksums.
-- desc: version (4 or 6, default 4), proto ("udp", "tcp", "icmp", "icmpv6"
-- or a number; default "udp"), src, dst, sport, dport, payload, ttl,
-- tcp_flags (a number, default SYN 2), icmp_type, icmp_code.
function _M.packet(desc)
	desc = desc or {}
	local version = desc.version or ((desc.src or desc.dst or ""):find(":") and 6 or 4)
	local proto = protocols[desc.proto or "udp"] or desc.proto
	if type(proto) ~= "number" then
		error("nfq.testing: unknown protocol " .. tostring(desc.proto), 2)
	end
	local payload = desc.payload or ""
	local l4
	if proto == 17 then
		l4 = u16(desc.sport or 40000) .. u16(desc.dport or 53) .. "\0\0\0\0" .. payload
	elseif proto == 6 then
		l4 = u16(desc.sport or 40000) .. u16(desc.dport or 80) .. u32(desc.seq or 1) .. u32(desc.ack or 0)
			.. string.char(0x50, desc.tcp_flags or 2) .. u16(65535) .. "\0\0\0\0" .. payload
	elseif proto == 1 or proto == 58 then
		l4 = string.char(desc.icmp_type or (proto == 1 and 8 or 128), desc.icmp_code or 0) .. "\0\0\0\1\0\1" .. payload
	else
		l4 = payload
	end
	local ip
	if version == 4 then
		ip = "\69\0" .. u16(20 + #l4) .. u16(desc.id or 1) .. "\64\0" .. string.char(desc.ttl or 64, proto)
			.. "\0\0" .. ipv4_address(desc.src or "10.0.0.1") .. ipv4_address(desc.dst or "10.0.0.2")
	else
		ip = "\96\0\0\0" .. u16(#l4) .. string.char(proto, desc.ttl or 64)
			.. ipv6_address(desc.src or "fd00::1") .. ipv6_address(desc.dst or "fd00::2")
	end
	local bytes = ip .. l4
	local buf = ffi.new("uint8_t[?]", #bytes)
	ffi.copy(buf, bytes, #bytes)
	C.nfq_fix_checksums(buf, #bytes)
	return ffi.string(buf, #bytes)
end

local hooks = { prerouting = 0, input = 1, forward = 2, output = 3, postrouting = 4 }

-- A hook by name ("output") or number (3).
local function hook_number(hook)
	local n = hooks[hook] or (type(hook) == "number" and hook >= 0 and hook <= 4 and hook)
	if not n then
		error("nfq.testing: unknown hook " .. tostring(hook)
			.. " (prerouting, input, forward, output, postrouting or 0-4)", 0)
	end
	return n
end

-- A path or a table has the daemon's contract: on_start runs first.
local function callback_of(script)
	if type(script) ~= "string" and type(script) ~= "table" then return script, {} end
	local hooks_table = type(script) == "string" and engine.load(script) or script
	if hooks_table.on_start then hooks_table.on_start() end
	return hooks_table.on_packet, hooks_table
end

local function run_offline(script, packets, opts, clock)
	local cb, hooks_table = callback_of(script)
	local q = C.nfq_queue_open_offline(opts.mode or nfq.COPY_PACKET, opts.range or 65535)
	if q == nil then error("nfq.testing: cannot open an offline queue", 2) end
	q = ffi.gc(q, C.nfq_queue_close)
	q.fallback = (opts.fallback == "drop") and 0 or 1
	local queue = nfq._adopt(q, cb)
	local meta = ffi.new("struct nfq_packet")
	local inputs, results, repeats = {}, {}, {}
	local on_timer = hooks_table.on_timer
	local interval = on_timer and (hooks_table.timer_interval or 1) or 0
	local next_tick = clock + interval
	local function push(id, input, bytes, mark)
		ffi.fill(meta, ffi.sizeof(meta))
		meta.id = id
		meta.hw_protocol = rshift(bytes:byte(1) or 0, 4) == 6 and 0x86dd or 0x0800
		meta.hook = hook_number(type(input) == "table" and input.hook or opts.hook or "input")
		meta.mark = mark or 0
		if type(input) == "table" and input.hw then
			ffi.copy(meta.hw_addr, input.hw, math.min(#input.hw, 8))
			meta.hw_addrlen = math.min(#input.hw, 8)
			meta.flags = C.NFQ_PF_HW
		end
		if C.nfq_queue_offline_push(q, meta, bytes, #bytes) ~= 0 then
			queue:_dispatch()
			C.nfq_queue_flush(q)
			assert(C.nfq_queue_offline_push(q, meta, bytes, #bytes) == 0)
		end
	end

	local function take()
		local n = ffi.new("uint32_t[1]")
		local recs = C.nfq_queue_records(q, n)
		local again = {}
		for i = 0, n[0] - 1 do
			local r = recs[i]
			local v = band(r.verdict, 0xffff)
			local id = tonumber(r.id)
			local payload = r.payload ~= nil and ffi.string(r.payload, r.payload_len) or nil
			local mark = band(r.flags, C.NFQ_PF_MARK_SET) ~= 0 and tonumber(r.mark) or nil
			if v == 4 and (repeats[id] or 0) < MAX_REPEATS then
				repeats[id] = (repeats[id] or 0) + 1
				again[#again + 1] = { id, payload or inputs[id].bytes, mark or inputs[id].mark }
			else
				results[#results + 1] = {
					id = id,
					verdict = v == 4 and "drop" or verdict_names[v],
					queue_num = v == 3 and rshift(r.verdict, 16) or nil,
					mark = mark,
					connmark = band(r.flags, C.NFQ_PF_CONNMARK_SET) ~= 0 and tonumber(r.connmark) or nil,
					payload = payload,
					fallback = band(r.flags, C.NFQ_PF_FALLBACK) ~= 0,
					repeats = repeats[id],
					time = clock,
					packet = inputs[id].bytes,
				}
			end
		end
		C.nfq_queue_clear_records(q)
		for _, a in ipairs(again) do
			inputs[a[1]].bytes, inputs[a[1]].mark = a[2], a[3]
			push(a[1], inputs[a[1]].input, a[2], a[3])
		end
		return #again > 0
	end

	local function dispatch()
		repeat
			local ok, err = pcall(queue._dispatch, queue)
			if not ok then
				C.nfq_queue_finish_current(q)
				C.nfq_queue_flush(q)
				error(err, 0)
			end
			C.nfq_queue_flush(q)
		until not take()
	end

	-- on_timer, as the daemon runs it: verdicts flushed together.
	local function tick()
		clock = next_tick
		nfq._set_now(clock)
		q.in_dispatch = 1
		local ok, err = pcall(on_timer)
		C.nfq_queue_flush(q)
		if not ok then error(err, 0) end
		if take() then dispatch() end
		next_tick = next_tick + interval
	end

	-- Packets with the same time reach the script as one batch.
	for i, input in ipairs(packets) do
		local bytes = type(input) == "table" and input.bytes or input
		local t = math.max(type(input) == "table" and input.time or clock, clock)
		if t > clock then
			dispatch()
			while interval > 0 and next_tick <= t do tick() end
			clock = t
			nfq._set_now(clock)
		end
		inputs[i] = { input = input, bytes = bytes, mark = type(input) == "table" and input.mark or nil }
		push(i, input, bytes, inputs[i].mark)
	end
	dispatch()
	local drain_end = clock + DRAIN_SECONDS
	while #results < #inputs and interval > 0 and next_tick <= drain_end do tick() end
	if hooks_table.on_stop then hooks_table.on_stop() end
	-- Packets still held get the fallback verdict, as at a daemon stop.
	C.nfq_queue_unbind(q)
	take()
	results.by_id = {}
	for _, r in ipairs(results) do results.by_id[r.id] = r end
	return results
end

--- Run a script (a path, a callback, or a table with on_packet) on packets:
-- byte strings, or tables { bytes = ..., mark = ..., hook = ..., hw = ...,
-- time = ... }. The script runs on the packets' clock: nfq.now() is the
-- current packet's time (default: the previous one's, 0 for the first), and
-- on_timer runs every timer_interval of it, also after the last packet while
-- packets are held. opts: mode (nfq.COPY_PACKET), range (65535), hook
-- ("input"), fallback ("accept"). Returns the verdicts in the order they were
-- given: tables { id, verdict, queue_num, mark, connmark, payload, fallback,
-- repeats, time, packet }.
function _M.run(script, packets, opts)
	opts = opts or {}
	local first = packets[1]
	local clock = type(first) == "table" and first.time or 0
	nfq._set_now(clock)
	local ok, results = pcall(run_offline, script, packets, opts, clock)
	nfq._set_now(nil)
	if not ok then error(results, 0) end
	return results
end

return _M

--- nfq.testing: run filter scripts on packets built in a test, without a
-- kernel queue. The packets go through nfq.offline, the driver behind
-- nfqlua --replay: the same dispatch and verdict code as on a real queue (an
-- offline queue records the verdicts instead of sending them), on the
-- packets' clock.
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
local offline = require "nfq.offline"

local C = nfq._C
local band, rshift = bit.band, bit.rshift
local floor = math.floor
local shown, is_callable = nfq._shown, nfq._is_callable

local _M = { _VERSION = nfq._VERSION }

-- The most bytes an IP packet can have (its length fields are 16 bits).
local MAX_PACKET = 65535

local protocols = { icmp = 1, tcp = 6, udp = 17, icmpv6 = 58 }
local hooks = {
	prerouting = C.NFQ_HOOK_PREROUTING, input = C.NFQ_HOOK_INPUT, forward = C.NFQ_HOOK_FORWARD,
	output = C.NFQ_HOOK_OUTPUT, postrouting = C.NFQ_HOOK_POSTROUTING,
}

-- The checks below return an error message, or nil when the value is good.
local function bad_int(v, lo, hi, what)
	if type(v) ~= "number" or v ~= v or v ~= floor(v) or v < lo or v > hi then
		return ("nfq.testing: %s must be an integer from %d to %d, got %s"):format(what, lo, hi, shown(v))
	end
end

local function bad_fields(t, known, what)
	for k in pairs(t) do
		if not known[k] then
			local names = {}
			for name in pairs(known) do names[#names + 1] = name end
			table.sort(names)
			return ("nfq.testing: %s: unknown field %s (the fields are %s)")
				:format(what, type(k) == "string" and k or "[" .. shown(k) .. "]", table.concat(names, ", "))
		end
	end
end

local function u16(n) return string.char(band(rshift(n, 8), 255), band(n, 255)) end
local function u32(n) return u16(band(rshift(n, 16), 0xffff)) .. u16(band(n, 0xffff)) end

-- The 4 or 16 bytes of an address in text form, or nil.
local function ipv4_address(text)
	local octets = { text:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$") }
	if #octets ~= 4 then return nil end
	for i, o in ipairs(octets) do
		octets[i] = tonumber(o)
		if #o > 3 or octets[i] > 255 then return nil end
	end
	return string.char(unpack(octets))
end

local function ipv6_groups(part, into)
	if part == "" then return true end
	for g in (part .. ":"):gmatch("([^:]*):") do
		if not g:match("^%x%x?%x?%x?$") then return false end
		into[#into + 1] = tonumber(g, 16)
	end
	return true
end

local function ipv6_address(text)
	local head, tail = text:match("^(.-)::(.*)$")
	local h, t = {}, {}
	if head then
		if tail:find("::", 1, true) or not ipv6_groups(head, h) or not ipv6_groups(tail, t) or #h + #t > 7 then
			return nil
		end
		for _ = 1, 8 - #h - #t do h[#h + 1] = 0 end
		for _, g in ipairs(t) do h[#h + 1] = g end
	elseif not ipv6_groups(text, h) or #h ~= 8 then
		return nil
	end
	local out = {}
	for i, g in ipairs(h) do out[i] = u16(g) end
	return table.concat(out)
end

local packet_fields = {
	version = true, proto = true, src = true, dst = true, sport = true, dport = true, payload = true,
	ttl = true, tcp_flags = true, icmp_type = true, icmp_code = true, id = true, seq = true, ack = true,
}
-- Numeric fields of testing.packet{} and their ranges.
local packet_ranges = {
	{ "sport", 0xffff }, { "dport", 0xffff }, { "ttl", 255 }, { "tcp_flags", 255 }, { "icmp_type", 255 },
	{ "icmp_code", 255 }, { "id", 0xffff }, { "seq", 0xffffffff }, { "ack", 0xffffffff },
}

-- desc's address field name for IP version, as bytes; default if absent.
local function address(desc, name, version, default)
	local text = desc[name]
	if text == nil then return (version == 4 and ipv4_address or ipv6_address)(default) end
	local bytes = type(text) == "string" and (version == 4 and ipv4_address or ipv6_address)(text)
	if not bytes then
		error(("nfq.testing: packet: %s must be an IPv%d address (as the other fields make the packet IPv%d), got %s")
			:format(name, version, version, shown(text)), 3)
	end
	return bytes
end

local function check_packet(desc)
	if type(desc) ~= "table" then
		error("nfq.testing: packet: the description must be a table, got " .. shown(desc), 3)
	end
	local msg = bad_fields(desc, packet_fields, "packet")
	for _, r in ipairs(packet_ranges) do
		if msg then break end
		if desc[r[1]] ~= nil then msg = bad_int(desc[r[1]], 0, r[2], "packet: " .. r[1]) end
	end
	if msg then error(msg, 3) end
	if desc.version ~= nil and desc.version ~= 4 and desc.version ~= 6 then
		error("nfq.testing: packet: version must be 4 or 6, got " .. shown(desc.version), 3)
	end
	if desc.payload ~= nil and type(desc.payload) ~= "string" then
		error("nfq.testing: packet: payload must be a string, got " .. shown(desc.payload), 3)
	end
	local proto = desc.proto
	if proto ~= nil and not protocols[proto] and bad_int(proto, 0, 255, "") then
		error("nfq.testing: packet: proto must be udp, tcp, icmp, icmpv6 or a protocol number from 0 to 255, got "
			.. shown(proto), 3)
	end
end

--- The bytes of an IPv4 or IPv6 packet with correct lengths and checksums.
-- desc: version (4 or 6; default 6 when src or dst has a ':'), proto ("udp",
-- "tcp", "icmp", "icmpv6" or a number; default "udp"), src, dst, sport,
-- dport, payload, ttl, tcp_flags (a number, default SYN 2), icmp_type,
-- icmp_code, id, seq, ack.
function _M.packet(desc)
	desc = desc or {}
	check_packet(desc)
	local function has_colon(v) return type(v) == "string" and v:find(":", 1, true) end
	local version = desc.version or ((has_colon(desc.src) or has_colon(desc.dst)) and 6 or 4)
	local src = address(desc, "src", version, version == 4 and "10.0.0.1" or "fd00::1")
	local dst = address(desc, "dst", version, version == 4 and "10.0.0.2" or "fd00::2")
	local proto = protocols[desc.proto or "udp"] or desc.proto
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
	local header_len = version == 4 and 20 or 40
	if header_len + #l4 > MAX_PACKET then
		error(("nfq.testing: packet: a payload of %d bytes makes an IPv%d packet of %d bytes, "
			.. "over the %d an IP packet can have"):format(#payload, version, header_len + #l4, MAX_PACKET), 2)
	end
	local ip
	if version == 4 then
		ip = "\69\0" .. u16(20 + #l4) .. u16(desc.id or 1) .. "\64\0" .. string.char(desc.ttl or 64, proto)
			.. "\0\0" .. src .. dst
	else
		ip = "\96\0\0\0" .. u16(#l4) .. string.char(proto, desc.ttl or 64) .. src .. dst
	end
	local bytes = ip .. l4
	local buf = ffi.new("uint8_t[?]", #bytes)
	ffi.copy(buf, bytes, #bytes)
	C.nfq_fix_checksums(buf, #bytes)
	return ffi.string(buf, #bytes)
end

-- A hook by name ("output") or number (3), or nil and the message.
local function hook_number(hook, what)
	local n = hooks[hook] or (type(hook) == "number" and hook >= 0 and hook <= 4 and hook == floor(hook) and hook)
	if not n then
		return nil, ("nfq.testing: %s must be prerouting, input, forward, output, postrouting or 0-4, got %s")
			:format(what, shown(hook))
	end
	return n
end

local input_fields = { bytes = true, mark = true, hook = true, hw = true, time = true }

-- One packet given to run(): its bytes, time, mark, hook and hw, or nil and
-- what is wrong with it.
local function check_input(input, i, default_hook)
	local what = ("packets[%d]"):format(i)
	if type(input) == "string" then input = { bytes = input } end
	if type(input) ~= "table" then
		return nil, ("nfq.testing: %s must be the bytes of a packet (a string, as testing.packet{} makes) or a "
			.. "table { bytes = ..., time, mark, hook, hw }, got %s"):format(what, shown(input))
	end
	local msg = bad_fields(input, input_fields, what)
	if msg then return nil, msg end
	local bytes = input.bytes
	if type(bytes) ~= "string" or #bytes == 0 or #bytes > MAX_PACKET then
		return nil, ("nfq.testing: %s.bytes must be a string of 1 to %d bytes, got %s")
			:format(what, MAX_PACKET, type(bytes) == "string" and ("%d bytes"):format(#bytes) or shown(bytes))
	end
	if input.mark ~= nil then
		msg = bad_int(input.mark, 0, 0xffffffff, what .. ".mark")
		if msg then return nil, msg end
	end
	local hook, err = hook_number(input.hook == nil and default_hook or input.hook, what .. ".hook")
	if not hook then return nil, err end
	if input.hw ~= nil and (type(input.hw) ~= "string" or #input.hw == 0 or #input.hw > 8) then
		return nil, ("nfq.testing: %s.hw must be a hardware address of 1 to 8 bytes, got %s"):format(what, shown(input.hw))
	end
	local t = input.time
	if t ~= nil and (type(t) ~= "number" or t ~= t or t == math.huge or t == -math.huge) then
		return nil, ("nfq.testing: %s.time must be a number of seconds, got %s"):format(what, shown(t))
	end
	return { bytes = bytes, time = t, mark = input.mark or 0, hook = hook, hw = input.hw }
end

local run_opts = { mode = true, range = true, hook = true, fallback = true, send = true, send_mark = true,
	send_mask = true }
local fallbacks = { accept = C.NFQ_ACCEPT, drop = C.NFQ_DROP }

local function check_opts(opts)
	if type(opts) ~= "table" then
		return "nfq.testing: run: opts must be a table, got " .. shown(opts)
	end
	local msg = bad_fields(opts, run_opts, "run: opts")
	if msg then return msg end
	if opts.mode ~= nil and opts.mode ~= nfq.COPY_META and opts.mode ~= nfq.COPY_PACKET then
		return "nfq.testing: opts.mode must be nfq.COPY_META or nfq.COPY_PACKET, got " .. shown(opts.mode)
	end
	if opts.range ~= nil then
		msg = bad_int(opts.range, 1, 65535, "opts.range")
		if msg then return msg end
	end
	if opts.fallback ~= nil and not fallbacks[opts.fallback] then
		return "nfq.testing: opts.fallback must be \"accept\" or \"drop\", got " .. shown(opts.fallback)
	end
	if opts.send ~= nil and type(opts.send) ~= "boolean" then
		return "nfq.testing: opts.send must be true or false, got " .. shown(opts.send)
	end
	for _, name in ipairs { "send_mark", "send_mask" } do
		if opts[name] ~= nil then
			msg = bad_int(opts[name], 0, 0xffffffff, "opts." .. name)
				or not opts.send and ("nfq.testing: opts.%s goes with opts.send = true"):format(name)
			if msg then return msg end
		end
	end
	local _, err = hook_number(opts.hook or "input", "opts.hook")
	return err
end

-- The script as the daemon's table: a path is loaded, a callback wrapped.
local function hooks_of(script)
	if type(script) == "string" then return engine.load(script) end
	if type(script) == "table" and script.on_packet ~= nil then
		if not is_callable(script.on_packet) then
			error("nfq.testing: run: the script table's on_packet must be a function, got " .. shown(script.on_packet), 3)
		end
		for _, hook in ipairs { "on_start", "on_stop", "on_timer" } do
			if script[hook] ~= nil and not is_callable(script[hook]) then
				error(("nfq.testing: run: the script table's %s must be a function, got %s"):format(hook, shown(script[hook])), 3)
			end
		end
		local interval = script.timer_interval
		if interval ~= nil and (type(interval) ~= "number" or interval ~= interval or interval < 0.001) then
			error("nfq.testing: run: timer_interval must be a number of seconds, at least 0.001, got " .. shown(interval), 3)
		end
		return script
	end
	if is_callable(script) then return { on_packet = script } end
	error("nfq.testing: run: the script must be a path, a callback or a table with on_packet, got " .. shown(script), 3)
end

--- Run a script (a path, a callback, or a table with on_packet) on packets:
-- byte strings, or tables { bytes = ..., mark = ..., hook = ..., hw = ...,
-- time = ... }. opts: mode (nfq.COPY_PACKET), range (65535), hook ("input"),
-- fallback ("accept"), send (false), send_mark and send_mask (0). Returns
-- the final verdicts and the packets the script sent, in the order they
-- were given, as nfq.offline reports them, with by_id (the verdicts by
-- packet number), sent (the sent packets alone) and timer_skipped (on_timer
-- calls skipped over long gaps).
function _M.run(script, packets, opts)
	opts = opts or {}
	local msg = check_opts(opts)
	if msg then error(msg, 2) end
	if type(packets) ~= "table" then
		error("nfq.testing: run: packets must be a list of packets, got " .. shown(packets), 2)
	end
	local inputs = {}
	for i, input in ipairs(packets) do
		local err
		inputs[i], err = check_input(input, i, opts.hook or "input")
		if not inputs[i] then error(err, 2) end
	end
	local hooks_table = hooks_of(script)

	local q = C.nfq_queue_open_offline(opts.mode or nfq.COPY_PACKET, opts.range or 65535)
	if q == nil then error("nfq.testing: cannot open an offline queue: out of memory", 2) end
	q = ffi.gc(q, C.nfq_queue_close)
	q.fallback = fallbacks[opts.fallback or "accept"]
	if opts.send then
		local sender = C.nfq_sender_open(opts.send_mark or 0, opts.send_mask or 0, 0)
		if sender == nil then error("nfq.testing: cannot open an offline sender: out of memory", 2) end
		C.nfq_queue_set_sender(q, sender)
	end

	local i = 0
	local function source()
		i = i + 1
		local input = inputs[i]
		if not input then return nil end
		local meta = ffi.new("struct nfq_packet")
		meta.id = i
		meta.hw_protocol = rshift(input.bytes:byte(1), 4) == 6 and 0x86dd or 0x0800
		meta.hook = input.hook
		meta.mark = input.mark
		if input.hw then
			ffi.copy(meta.hw_addr, input.hw, #input.hw)
			meta.hw_addrlen = #input.hw
			meta.flags = C.NFQ_PF_HW
		end
		return input.bytes, input.time, meta
	end

	local results, sent = {}, {}
	local front = {
		call = pcall,
		verdict = function(r) results[#results + 1] = r end,
		sent = function(r)
			results[#results + 1] = r
			sent[#sent + 1] = r
		end,
		failed = function(_, err) error(err, 0) end,
		note = function() end,
	}
	-- on_start sees the first packet's time, as the script's clock starts there.
	nfq._set_now(inputs[1] and inputs[1].time or 0)
	local ok, skipped = pcall(function()
		-- The queue is the script's before on_start, as in the daemon: it may send.
		nfq._set_send_queue(nfq._adopt(q, hooks_table.on_packet))
		if hooks_table.on_start then hooks_table.on_start() end
		return offline.run(q, hooks_table, source, front)
	end)
	nfq._set_now(nil)
	nfq._set_send_queue(nil)
	if not ok then error(skipped, 0) end
	results.by_id = {}
	for _, r in ipairs(results) do
		if r.id then results.by_id[r.id] = r end
	end
	results.sent = sent
	results.timer_skipped = skipped
	return results
end

return _M

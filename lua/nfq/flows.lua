--- nfq.flows: a flow table in C (src/nfq_flows.c) read and written from Lua
-- through the FFI, and the in-order bytes of TCP streams.
--
-- Design. A table is a fixed array of records made once at creation: the
-- flow's counters, times, TCP state bits and key (struct nfq_flow), then the
-- script's own state, whose layout it declares once as an FFI struct. Lookup
-- (a hash), LRU order, expiry and eviction are C's; Lua gets a slot number
-- and turns it into a handle that is a number, not an object (see
-- handle_of), so a get() per packet allocates nothing and a handle used
-- after its flow ended raises instead of reading the slot's next flow.
-- Ended flows wait in C's queue until drain() has shown each to on_end.
-- Tables outlive a reload by name: C keeps a registry per engine (or one
-- for library mode) that the next version's nfq.flows{ name = ... } finds.
local ffi = require "ffi"
local nfq = require "nfq"

-- The handle's metatype can be set once per Lua state: a second load of
-- the module (package.loaded cleared) gets the first, whose tables it knows.
local registry = debug.getregistry()
if registry["nfq.flows"] then
	return registry["nfq.flows"]
end

local C = nfq._C
local ffi_cast, ffi_istype, ffi_string, ffi_gc = ffi.cast, ffi.istype, ffi.string, ffi.gc
local type, error, pcall, tostring, tonumber, pairs, setmetatable = type, error, pcall, tostring, tonumber, pairs,
	setmetatable
local floor = math.floor
local now, offline_now = nfq.now, nfq._offline_now
local c_packet, shown, is_callable = nfq._c_packet, nfq._shown, nfq._is_callable

local _M = { _VERSION = nfq._VERSION }

local NONE = 0xffffffff
local FLOW_FREE, FLOW_LIVE = C.NFQ_FLOW_FREE, C.NFQ_FLOW_LIVE
local EFULL = C.NFQ_FLOW_EFULL
local MAX_FLOWS, STREAM_MAX, STREAMS_MAX = C.NFQ_FLOW_MAX, C.NFQ_FLOW_STREAM_MAX, C.NFQ_FLOW_STREAMS_MAX
local NAME_MAX = C.NFQ_FLOW_NAME_MAX
local STREAM_ENOTTCP, STREAM_EFOREIGN = C.NFQ_FLOW_STREAM_ENOTTCP, C.NFQ_FLOW_STREAM_EFOREIGN
local STREAM_ENOBUFS = C.NFQ_FLOW_STREAM_ENOBUFS
local TCP_SYN, TCP_SYNACK, TCP_ESTABLISHED = C.NFQ_FLOW_TCP_SYN, C.NFQ_FLOW_TCP_SYNACK, C.NFQ_FLOW_TCP_ESTABLISHED
local TCP_FIN_ORIG, TCP_FIN_REPLY, TCP_RST = C.NFQ_FLOW_TCP_FIN_ORIG, C.NFQ_FLOW_TCP_FIN_REPLY, C.NFQ_FLOW_TCP_RST
-- Flows that expire() ends per call unless told otherwise.
local EXPIRE_BUDGET = 64

local flow_ptr_t = ffi.typeof("struct nfq_flow *")
local handle_t = ffi.typeof("struct nfq_lua_flow *")
local uintptr_t = ffi.typeof("uintptr_t")
local bytes_t = ffi.typeof("uint8_t *")
local packet_ref_t = ffi.typeof("struct nfq_lua_packet_ref *")
local packet_t = ffi.typeof("struct nfq_lua_packet")

-- A handle's value: table number * 2^45 + slot * 2^21 + the slot's
-- generation (which C keeps below 2^21), all within a double's 53 exact bits.
local GEN_SCALE, SLOT_SCALE, MAX_TABLES = 2 ^ 21, 2 ^ 24, 256
local TABLE_SCALE = GEN_SCALE * SLOT_SCALE

-- The tables this Lua state made, by number (never reused), held weakly:
-- a table the script dropped is collected, and its handles then raise.
local tables, tables_made = setmetatable({}, { __mode = "v" }), 0

local timeout_names = { "tcp_syn", "tcp_established", "tcp_fin", "tcp_close", "udp", "udp_stream", "icmp", "other" }
-- Seconds idle, by class, like conntrack's defaults where a filter can
-- afford them (its established TCP timeout is 5 days).
local default_timeouts = {
	tcp_syn = 60, tcp_established = 3600, tcp_fin = 120, tcp_close = 10,
	udp = 30, udp_stream = 120, icmp = 30, other = 600,
}
local reasons = { "timeout", "fin", "rst", "evicted", "removed" }

local Flows = {}
Flows.__index = Flows
local Flow = {}

local function flow_record(t, slot)
	return ffi_cast(flow_ptr_t, t.slots + slot * t.stride)
end

local function handle_of(self, slot, gen)
	return ffi_cast(handle_t, self.base + slot * GEN_SCALE + gen)
end

--- The record behind a handle, its table object and slot; raises when the
-- flow has ended and been freed, or its table was closed.
local function flow_of(h, level)
	local v = tonumber(ffi_cast(uintptr_t, h))
	local gen = v % GEN_SCALE
	local rest = (v - gen) / GEN_SCALE
	local slot = rest % SLOT_SCALE
	local self = tables[(rest - slot) / SLOT_SCALE]
	local records = self and self.records
	if records == nil then
		error("nfq: this flow's table was closed", level)
	end
	local f = ffi_cast(flow_ptr_t, records + slot * self.stride)
	if f.gen ~= gen or f.state == FLOW_FREE then
		error("nfq: this flow has ended (timeout, close, eviction or flows:remove): take the flow of each packet "
			.. "from flows:get(pkt) instead of keeping it", level)
	end
	return f, self, slot
end

local function log(warning, msg)
	local engine = package.loaded["nfq.engine"]
	if engine and engine.log then
		engine.log(warning, "nfq.flows: " .. msg)
	elseif warning then
		io.stderr:write("nfq.flows: ", msg, "\n")
	end
end

--- Show every ended flow to on_end: after each C call that can end flows,
-- so the queue is empty whenever a call returns. Each next_ended() frees
-- the flow shown before, also when on_end raised (the error goes on up).
local function drain(self)
	local t = self.t
	local on_end = self.on_end
	local slot = C.nfq_flows_next_ended(t)
	while slot >= 0 do
		local f = flow_record(t, slot)
		on_end(handle_of(self, slot, f.gen), reasons[f.why])
		slot = C.nfq_flows_next_ended(t)
	end
end

-- One ended flow to on_end, and whether there was one.
local function show_one(self, t)
	local slot = C.nfq_flows_next_ended(t)
	if slot < 0 then return false end
	self.on_end(handle_of(self, slot, flow_record(t, slot).gen), reasons[flow_record(t, slot).why])
	return true
end

-- drain() for get(), which ends at most four flows (two timed out, one
-- evicted, a closed one whose ports a new SYN takes): unrolled, since a loop
-- on the per-packet path ends the JIT's trace.
local function drain_get(self, t)
	if show_one(self, t) and show_one(self, t) and show_one(self, t) and show_one(self, t) then
		drain(self)
	end
end

local function table_of(self, level)
	local t = self.t
	if t == nil then
		error("nfq: this flow table is closed", level + 1)
	end
	return t
end

local function packet_of(pkt, what, level)
	if not ffi_istype(packet_ref_t, pkt) and not ffi_istype(packet_t, pkt) then
		error(("nfq: %s expects a packet, got %s"):format(what, shown(pkt)), level + 1)
	end
	return c_packet(pkt)
end

-- A table handed over by a reload takes the new version's timeouts and end
-- callback at that version's first use of it, not while it is loaded: the
-- reload may yet fail, and the old version run on.
local function take_over(self, t)
	for i = 0, #timeout_names - 1 do t.timeouts[i] = self.timeouts[i] end
	t.next_check = -math.huge
	t.keep_ended = self.on_end and 1 or 0
	self.taken_over = true
end

local function lookup(self, pkt, create, what)
	local t = table_of(self, 3)
	if not self.taken_over then take_over(self, t) end
	local p = packet_of(pkt, what, 3)
	-- -1: C reads nfq.now()'s clock, once per batch.
	local slot = C.nfq_flows_get(t, p, offline_now() or -1, create)
	if t.ended_head ~= NONE then drain_get(self, t) end
	if slot < 0 then
		if slot ~= EFULL then return nil end
		error(("nfq: %s: every slot holds a flow that waits for on_end (is flows:get called from on_end?)")
			:format(what), 3)
	end
	return handle_of(self, slot, flow_record(t, slot).gen)
end

--- The flow of a packet, made if new (nil for a packet that is not IP, or
-- whose headers are cut); its counters and state count this packet.
function Flows:get(pkt)
	local flow = lookup(self, pkt, 1, "flows:get")
	return flow
end

local dirs = { [0] = "orig", "reply" }

--- The fast path of get(): the packet's flow found or made and counted as
-- get() does, but no handle: the pointer to the flow's state (opts.state's
-- type) and the packet's direction, or nil as get(). The pointer is valid
-- for this packet's callback only, as flow.state is.
function Flows:state(pkt)
	local t = self.t
	if t == nil then
		error("nfq: this flow table is closed", 2)
	end
	local state_t = self.state_ptr_t
	if state_t == nil then
		error("nfq: flows:state: the table has no state; create it with state = \"struct { ... }\", "
			.. "or use flows:get(pkt)", 2)
	end
	if not self.taken_over then take_over(self, t) end
	local p = packet_of(pkt, "flows:state", 2)
	local slot = C.nfq_flows_get(t, p, offline_now() or -1, 1)
	if t.ended_head ~= NONE then drain_get(self, t) end
	if slot < 0 then
		if slot ~= EFULL then return nil end
		error("nfq: flows:state: every slot holds a flow that waits for on_end (is flows:state called from "
			.. "on_end?)", 2)
	end
	local record = self.records + slot * self.stride
	return ffi_cast(state_t, record + self.user_offset), dirs[ffi_cast(flow_ptr_t, record).dir]
end

--- The flow of a packet if there is one, counters untouched.
function Flows:find(pkt)
	local flow = lookup(self, pkt, 0, "flows:find")
	return flow
end

function Flows:count()
	return table_of(self, 2).count
end

--- Call fn(flow) for every live flow.
function Flows:each(fn)
	local t = table_of(self, 2)
	if not is_callable(fn) then
		error("nfq: flows:each expects a function, got " .. shown(fn), 2)
	end
	for slot = 0, t.capacity - 1 do
		local f = flow_record(t, slot)
		if f.state == FLOW_LIVE then fn(handle_of(self, slot, f.gen)) end
	end
end

--- End a flow now (on_end sees it, why "removed"); its handle is gone after.
function Flows:remove(flow)
	local t = table_of(self, 2)
	if not self.taken_over then take_over(self, t) end
	if not ffi_istype(handle_t, flow) then
		error("nfq: flows:remove expects a flow, got " .. shown(flow), 2)
	end
	local f, owner, slot = flow_of(flow, 3)
	if owner ~= self then
		error("nfq: flows:remove: the flow belongs to another table", 2)
	end
	if f.state == FLOW_LIVE then
		C.nfq_flows_remove(t, slot)
		drain(self)
	end
end

--- End up to budget (default 64) flows whose timeout has passed: for
-- on_timer, so that flows end while no packet comes. How many ended.
function Flows:expire(budget)
	local t = table_of(self, 2)
	if not self.taken_over then take_over(self, t) end
	if budget ~= nil and (type(budget) ~= "number" or budget < 1 or budget ~= floor(budget)) then
		error("nfq: flows:expire: budget must be a positive integer, got " .. shown(budget), 2)
	end
	local n = C.nfq_flows_expire(t, now(), budget or EXPIRE_BUDGET)
	drain(self)
	return n
end

--- Let go of the table now rather than at collection: its flows are gone
-- for this Lua state (a named table lives on while another holds it).
function Flows:close()
	local t = self.t
	if t == nil then return end
	self.t, self.records = nil, nil
	ffi_gc(t, nil)
	C.nfq_flows_release(t)
end

Flows.__tostring = function(self)
	if self.t == nil then return "flow table (closed)" end
	return ("flow table%s, %d of %d flows"):format(self.name and " '" .. self.name .. "'" or "", self.t.count,
		self.t.max)
end

--------------------------------------------------------------------------
-- Flows
--------------------------------------------------------------------------

local ntop_buf = ffi.new("char[46]")
local function address(f, i)
	return ffi_string(ffi.C.nfq_inet_ntop(f.family == 4 and 2 or 10, f.addr[i], ntop_buf, 46))
end

local function tcp_state(f)
	if f.proto ~= 6 then return nil end
	local tcp = f.tcp
	if tcp >= TCP_RST or (tcp % (2 * TCP_FIN_REPLY) >= TCP_FIN_REPLY and tcp % TCP_FIN_REPLY >= TCP_FIN_ORIG) then
		return "closed"
	elseif tcp % (2 * TCP_FIN_REPLY) >= TCP_FIN_ORIG then
		return "closing"
	elseif tcp % (2 * TCP_ESTABLISHED) >= TCP_ESTABLISHED then
		return "established"
	end
	return "handshake"
end

local function bit_set(v, b) return v % (2 * b) >= b end

local fields = {
	dir = function(f) return f.dir == 0 and "orig" or "reply" end,
	orig_packets = function(f) return tonumber(f.packets[0]) end,
	reply_packets = function(f) return tonumber(f.packets[1]) end,
	orig_bytes = function(f) return tonumber(f.bytes[0]) end,
	reply_bytes = function(f) return tonumber(f.bytes[1]) end,
	packets = function(f) return tonumber(f.packets[0] + f.packets[1]) end,
	bytes = function(f) return tonumber(f.bytes[0] + f.bytes[1]) end,
	first_seen = function(f) return f.first_seen end,
	last_seen = function(f) return f.last_seen end,
	family = function(f) return f.family end,
	proto = function(f) return f.proto end,
	src = function(f) return address(f, 0) end,
	dst = function(f) return address(f, 1) end,
	sport = function(f) return f.port[0] end,
	dport = function(f) return f.port[1] end,
	tcp_state = tcp_state,
	syn = function(f) return bit_set(f.tcp, TCP_SYN) end,
	synack = function(f) return bit_set(f.tcp, TCP_SYNACK) end,
	established = function(f) return bit_set(f.tcp, TCP_ESTABLISHED) end,
	fin_orig = function(f) return bit_set(f.tcp, TCP_FIN_ORIG) end,
	fin_reply = function(f) return bit_set(f.tcp, TCP_FIN_REPLY) end,
	rst = function(f) return bit_set(f.tcp, TCP_RST) end,
	ended = function(f) return f.state ~= FLOW_LIVE end,
	why = function(f) return f.state ~= FLOW_LIVE and reasons[f.why] or nil end,
	state = function(f, self)
		local state_t = self.state_ptr_t
		if state_t == nil then return nil end
		return ffi_cast(state_t, ffi_cast(bytes_t, f) + self.user_offset)
	end,
}

local data_box = ffi.new("const uint8_t *[1]")
local contiguous_box = ffi.new("uint32_t[1]")
local dir_box = ffi.new("int[1]")
local empty = ffi.new("uint8_t[1]")

local function stream(h, pkt, n, what)
	local f, self, slot = flow_of(h, 4)
	local t = self.t
	if t.stream_bytes == 0 then
		error(("nfq: %s: the table keeps no stream bytes; create it with stream_bytes = N"):format(what), 3)
	end
	if f.proto ~= 6 then
		error(("nfq: %s: this is a flow of protocol %d; stream bytes are TCP's"):format(what, f.proto), 3)
	end
	if f.state ~= FLOW_LIVE then
		error(("nfq: %s: the flow has ended, and its stream bytes with it"):format(what), 3)
	end
	local p = packet_of(pkt, what, 3)
	if n == nil then
		n = t.stream_bytes
	elseif type(n) ~= "number" or n ~= floor(n) or n < 0 or n > t.stream_bytes then
		error(("nfq: %s: n must be an integer from 0 to %d (the table's stream_bytes), got %s")
			:format(what, t.stream_bytes, shown(n)), 3)
	end
	local rc = C.nfq_flows_stream(t, slot, p, data_box, contiguous_box, dir_box)
	if rc == STREAM_EFOREIGN then
		error(("nfq: %s: the packet is not of this flow"):format(what), 3)
	elseif rc == STREAM_ENOTTCP then
		return nil, "the packet is not a whole TCP segment"
	elseif rc == STREAM_ENOBUFS then
		return nil, ("all %d stream buffers are in use: raise streams, or call flow:stream_done() on flows "
			.. "you have decided"):format(t.streams)
	end
	local len = contiguous_box[0]
	if len > n then len = n end
	local data = data_box[0]
	if data == nil then return empty, 0 end
	return data, len
end

--- Add pkt's TCP payload to its direction's stream, and give the stream's
-- first bytes: a pointer and how many of the first n are there in order
-- (valid until the flow ends or stream_done), or nil and why.
function Flow:stream(pkt, n)
	local data, len = stream(self, pkt, n, "flow:stream")
	return data, len
end

--- The same as a Lua string.
function Flow:stream_string(pkt, n)
	local data, len = stream(self, pkt, n, "flow:stream_string")
	if not data then return nil, len end
	return ffi_string(data, len)
end

--- Give the flow's stream buffers back to the pool; later segments are not kept.
function Flow:stream_done()
	local _, flows, slot = flow_of(self, 3)
	C.nfq_flows_stream_done(flows.t, slot)
end

--- Accept pkt with the bypass mark (pkt:bypass()), so that the rest of the
-- flow skips the queue; the flow's stream buffers go back to the pool.
function Flow:bypass(pkt)
	local _, flows, slot = flow_of(self, 3)
	C.nfq_flows_stream_done(flows.t, slot)
	return pkt:bypass()
end

ffi.metatype("struct nfq_lua_flow", {
	__index = function(h, k)
		local method = Flow[k]
		if method then return method end
		local get = fields[k]
		if get == nil then
			error(("nfq: a flow has no field %s"):format(shown(k)), 2)
		end
		local f, self = flow_of(h, 3)
		return get(f, self)
	end,
	__newindex = function(_, k)
		error(("nfq: flow.%s is read-only; the script's own fields are in flow.state"):format(tostring(k)), 2)
	end,
	__tostring = function(h)
		local ok, f = pcall(flow_of, h, 1)
		if not ok then return "flow (ended)" end
		local proto = ({ [6] = "tcp", [17] = "udp", [1] = "icmp", [58] = "icmpv6" })[f.proto] or tostring(f.proto)
		local function endpoint(i)
			local a = address(f, i)
			return (f.family == 6 and "[" .. a .. "]" or a) .. ":" .. f.port[i]
		end
		return ("flow %s %s > %s"):format(proto, endpoint(0), endpoint(1))
	end,
})

--------------------------------------------------------------------------
-- Creation
--------------------------------------------------------------------------

local known_opts = {
	max = true, state = true, name = true, on_end = true, timeouts = true, stream_bytes = true, streams = true,
}

local function check_int(v, lo, hi, what)
	if type(v) ~= "number" or v ~= floor(v) or v < lo or v > hi then
		error(("nfq.flows: %s must be an integer from %d to %d, got %s"):format(what, lo, hi, shown(v)), 4)
	end
	return v
end

-- The script's state type: a pointer type to it, its size and alignment,
-- and its declaration as the layout check compares it.
local function state_type(decl)
	if decl == nil then return nil, 0, 1, "" end
	if type(decl) ~= "string" then
		error("nfq.flows: state must be a C struct declaration (a string such as "
			.. "\"struct { uint8_t verdict; uint32_t seen; }\"), got " .. shown(decl), 4)
	end
	local ok, ct = pcall(ffi.typeof, decl)
	if not ok then
		error(("nfq.flows: state %q is not a C type the FFI can declare (%s); write it as "
			.. "\"struct { uint8_t verdict; uint32_t seen; }\""):format(decl, tostring(ct):gsub("^.-: ", "")), 4)
	end
	local kind = tostring(ct):match("^ctype<(%a+)")
	local size = ffi.sizeof(ct)
	if (kind ~= "struct" and kind ~= "union") or not size or size == 0 then
		error(("nfq.flows: state %q must be a struct (or union) of fixed, nonzero size"):format(decl), 4)
	end
	if size > 65536 then
		error(("nfq.flows: state is %d bytes, more than the 65536 a flow's state may have"):format(size), 4)
	end
	local normalized = decl:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
	-- Declared again rather than as ffi.typeof("$ *", ct): under busted,
	-- that gave a pointer to an anonymous struct of an earlier test.
	return ffi.typeof(decl .. " *"), size, ffi.alignof(ct), normalized
end

local function read_timeouts(given)
	local t = {}
	if given ~= nil and type(given) ~= "table" then
		error("nfq.flows: timeouts must be a table of seconds by name, got " .. shown(given), 4)
	end
	for k, v in pairs(given or {}) do
		if default_timeouts[k] == nil then
			error(("nfq.flows: unknown timeout '%s'; the timeouts are %s"):format(tostring(k),
				table.concat(timeout_names, ", ")), 4)
		end
		if type(v) ~= "number" or v ~= v or v <= 0 or v == math.huge then
			error(("nfq.flows: timeouts.%s must be a positive number of seconds, got %s"):format(k, shown(v)), 4)
		end
	end
	for i, name in ipairs(timeout_names) do
		t[i - 1] = given and given[name] or default_timeouts[name]
	end
	return t
end

--- A flow table: see README.md, Flows.
function _M.new(opts)
	if type(opts) ~= "table" then
		error("nfq.flows: expects a table of options ({ max = 10000, state = \"struct { ... }\" }), got "
			.. shown(opts), 3)
	end
	for k in pairs(opts) do
		if not known_opts[k] then
			error(("nfq.flows: unknown option '%s'"):format(tostring(k)), 3)
		end
	end
	local max = check_int(opts.max or 65536, 1, MAX_FLOWS, "max")
	local state_ptr_t, size, align, decl = state_type(opts.state)
	local name = opts.name
	if name ~= nil and (type(name) ~= "string" or #name == 0 or #name >= NAME_MAX) then
		error(("nfq.flows: name must be a string of 1 to %d bytes, got %s"):format(NAME_MAX - 1, shown(name)), 3)
	end
	if opts.on_end ~= nil and not is_callable(opts.on_end) then
		error("nfq.flows: on_end must be a function, got " .. shown(opts.on_end), 3)
	end
	local stream_bytes = check_int(opts.stream_bytes or 0, 0, STREAM_MAX, "stream_bytes")
	local streams = 0
	if stream_bytes > 0 then
		streams = check_int(opts.streams or math.min(max, 1024), 1, STREAMS_MAX, "streams")
	elseif opts.streams ~= nil then
		error("nfq.flows: streams goes with stream_bytes (the bytes each stream buffer holds)", 3)
	end
	local timeouts = read_timeouts(opts.timeouts)
	if tables_made == MAX_TABLES then
		error(("nfq.flows: this Lua state has made %d flow tables, the most it can"):format(MAX_TABLES), 3)
	end
	local layout = ("%s|size=%d|align=%d|max=%d|stream_bytes=%d|streams=%d"):format(decl, size, align, max,
		stream_bytes, streams)
	local engine = package.loaded["nfq.engine"]
	local reused = ffi.new("int[1]")
	local t = C.nfq_flows_open(engine and engine.scope, name, layout, max, size, align, stream_bytes, streams, reused)
	if t == nil then
		error(("nfq.flows: cannot allocate a table of %d flows of %d bytes: out of memory"):format(max,
			C.NFQ_FLOW_RECORD + size), 3)
	end
	ffi_gc(t, C.nfq_flows_release)
	if reused[0] == 1 then
		log(false, ("table '%s' handed over with its %d flows"):format(name, t.count))
	elseif reused[0] == -1 then
		log(true, ("table '%s' starts empty: its layout changed (%s), so the flows of the previous version "
			.. "are not handed over"):format(name, layout))
	end
	local number = tables_made
	tables_made = number + 1
	local self = setmetatable({
		t = t, records = t.slots, stride = t.stride, user_offset = t.user_offset,
		name = name, max = max, on_end = opts.on_end, state_ptr_t = state_ptr_t, timeouts = timeouts,
		base = number * TABLE_SCALE,
	}, Flows)
	tables[number] = self
	if reused[0] ~= 1 then take_over(self, t) end
	return self
end

_M.timeouts = default_timeouts
_M.reasons = reasons

registry["nfq.flows"] = _M
return _M

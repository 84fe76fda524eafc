--- nfq: bind a Linux NFQUEUE and give each queued packet to a Lua callback.
-- The per-packet path is FFI calls into the C core (nfq/core.so, or the
-- nfqlua binary itself); see README.md for the API and its guarantees.
local ffi = require "ffi"
local bit = require "bit"

-- FFI metatypes can be set once per Lua state. When the module is loaded
-- again (package.loaded cleared, as busted's insulation and OpenResty's
-- lua_code_cache off do), hand back the first copy.
local registry = debug.getregistry()
if registry["nfq.module"] then
	return registry["nfq.module"]
end

local cdef = require "nfq.cdef"
local headers = require "nfq.headers"

local band, bor, bnot, rshift = bit.band, bit.bor, bit.bnot, bit.rshift
local floor = math.floor
local type, error, pcall, tostring, tonumber, select = type, error, pcall, tostring, tonumber, select
local setmetatable, getmetatable, pairs, ipairs, next, unpack = setmetatable, getmetatable, pairs, ipairs, next, unpack
local ffi_string, ffi_errno, ffi_gc, ffi_cast = ffi.string, ffi.errno, ffi.gc, ffi.cast
local ffi_copy, ffi_fill, ffi_istype = ffi.copy, ffi.fill, ffi.istype

if not pcall(function() return ffi.C.nfq_strerror end) then
	ffi.cdef [[char *nfq_strerror(int errnum) asm("strerror");]]
end
if not pcall(ffi.typeof, "struct nfq_timespec") then
	ffi.cdef [[
	struct nfq_timespec { long tv_sec; long tv_nsec; };
	int nfq_clock_gettime(int clock_id, struct nfq_timespec *ts) asm("clock_gettime");
	]]
end
if not pcall(ffi.typeof, "struct nfq_pollfd") then
	ffi.cdef [[
	struct nfq_pollfd { int fd; short events; short revents; };
	int nfq_poll(struct nfq_pollfd *fds, unsigned long nfds, int timeout) asm("poll");
	]]
end

-- The core is either linked into this process (the nfqlua daemon, or a C
-- host linking libnfqlua) or loaded from package.cpath. The namespace is
-- cached, not its functions: the JIT resolves C.fn to a constant.
local C, core_path
if pcall(function() return ffi.C.nfq_queue_open end) then
	C = ffi.C
else
	core_path = package.searchpath("nfq.core", package.cpath)
	if not core_path then
		error("nfq: cannot find nfq/core.so in package.cpath; run make, or add the lua/ directory to LUA_CPATH", 2)
	end
	C = ffi.load(core_path)
end

-- The structs are shared with the core as they are: a core from another
-- build would misread them instead of failing (as lua-resty-core's base.lua
-- checks the nginx module's version).
do
	local found, core_version = pcall(function() return ffi_string(C.nfq_version()) end)
	if not found or core_version ~= cdef.VERSION then
		local core = core_path and "nfq/core.so at " .. core_path or "the C core linked into this program"
		local fix = core_path and "rebuild with make, or fix LUA_CPATH"
			or "rebuild it against this version's libnfqlua"
		error(("nfq %s (%s) needs the C core of the same version, but %s is %s: %s"):format(cdef.VERSION,
			debug.getinfo(1, "S").short_src, core, found and core_version or "older (it has no nfq_version)", fix), 2)
	end
end

local _M = {
	_VERSION = cdef.VERSION,
	_C = C, -- the core's FFI namespace, for specs and tools; not a public API
	COPY_NONE = C.NFQ_COPY_NONE,
	COPY_META = C.NFQ_COPY_META,
	COPY_PACKET = C.NFQ_COPY_PACKET,
	DROP = C.NFQ_DROP,
	ACCEPT = C.NFQ_ACCEPT,
	REPEAT = C.NFQ_REPEAT,
}

local NF_DROP, NF_ACCEPT, NF_REPEAT = C.NFQ_DROP, C.NFQ_ACCEPT, C.NFQ_REPEAT
local EINTR, EPERM, EALREADY, EMSGSIZE = 4, 1, 114, 90

local PKT_PENDING = C.NFQ_PKT_PENDING
local PF_HW, PF_TIMESTAMP = C.NFQ_PF_HW, C.NFQ_PF_TIMESTAMP
local PF_MARK_SET, PF_PAYLOAD_SET, PF_RETAINED = C.NFQ_PF_MARK_SET, C.NFQ_PF_PAYLOAD_SET, C.NFQ_PF_RETAINED
local PF_UID, PF_GID, PF_CT, PF_CT_INFO = C.NFQ_PF_UID, C.NFQ_PF_GID, C.NFQ_PF_CT, C.NFQ_PF_CT_INFO
local PF_VLAN, PF_SKBINFO, PF_PRIORITY = C.NFQ_PF_VLAN, C.NFQ_PF_SKBINFO, C.NFQ_PF_PRIORITY
local PF_CONNMARK_SET = C.NFQ_PF_CONNMARK_SET
local FLAG_CONNTRACK = C.NFQ_FLAG_CONNTRACK
local NF_QUEUE, NF_STOP, NF_QUEUE_BYPASS = C.NFQ_QUEUE, C.NFQ_STOP, C.NFQ_QUEUE_BYPASS
local QUEUE_NUM_SCALE = 2 ^ C.NFQ_QUEUE_SHIFT

local queue_ptr_t = ffi.typeof("struct nfq_queue *")
local packet_ptr_t = ffi.typeof("struct nfq_packet *")
local const_bytes_t = ffi.typeof("const uint8_t *")

local function strerror(e)
	return ffi_string(C.nfq_strerror(e))
end

local function is_callable(f)
	if type(f) == "function" then return true end
	local mt = getmetatable(f)
	return type(mt) == "table" and type(mt.__call) == "function"
end

-- A value as error messages show it: its type, then the value itself for
-- numbers, booleans and strings (quoted, and cut after 40 bytes).
local SHOWN_BYTES = 40
local function shown(v)
	local t = type(v)
	if t == "number" or t == "boolean" then
		return t .. " " .. tostring(v)
	elseif t == "string" then
		local quoted = ("%q"):format(v:sub(1, SHOWN_BYTES)):gsub("\\\n", "\\n")
		if #v > SHOWN_BYTES then
			return ("string %s... (%d bytes)"):format(quoted, #v)
		end
		return "string " .. quoted
	end
	return t
end

local function check_int(v, lo, hi, what, level)
	if type(v) ~= "number" or v ~= v or v ~= floor(v) or v < lo or v > hi then
		error(("nfq: %s must be an integer from %d to %d, got %s"):format(what, lo, hi, shown(v)), level + 1)
	end
	return v
end

local function check_opts(opts, known, what, level)
	if opts == nil then return {} end
	if type(opts) ~= "table" then
		error(("nfq: %s options must be a table, got %s"):format(what, shown(opts)), level + 1)
	end
	for k in pairs(opts) do
		if not known[k] then
			error(("nfq: unknown %s option '%s'"):format(what, tostring(k)), level + 1)
		end
	end
	return opts
end

-- Shared with nfq.engine, which checks what scripts return, and with
-- nfq.testing, which checks its inputs.
_M._is_callable = is_callable
_M._shown = shown

local fallback_verdicts = { accept = NF_ACCEPT, drop = NF_DROP }

local function check_fallback(v, level)
	local verdict = fallback_verdicts[v]
	if not verdict then
		error(("nfq: fallback must be \"accept\" or \"drop\", got %s"):format(shown(v)), level + 1)
	end
	return verdict
end

--------------------------------------------------------------------------
-- Packets
--------------------------------------------------------------------------

local Packet = {}
-- Packet buffers, defined below: their type and their bytes.
local buffer_t, buffer_bytes

-- A packet in a batch slot reaches the script as a pointer-typed value, not
-- a struct (see struct nfq_lua_packet_ref): slot_arrays' index of its slot
-- array times 2^40, plus its slot times 2^32, plus the slot's generation.
-- Such a value is one the JIT never has to allocate, even when the script
-- calls C between two uses of the packet. A slot packet the script retained
-- is found by that value in moved_packets. Packets handed over by a reload
-- come as a struct nfq_lua_packet, which retain() points at its copy.
local packet_ref_t = ffi.typeof("struct nfq_lua_packet_ref *")
local uintptr_t = ffi.typeof("uintptr_t")
local PKT_MOVED = C.NFQ_PKT_MOVED
local SLOT_SCALE, SLOT_ARRAY_SCALE, MAX_SLOT_ARRAYS = 2 ^ 32, 2 ^ 40, 4096
local SLOTS_PER_ARRAY = SLOT_ARRAY_SCALE / SLOT_SCALE
local slot_arrays = ffi.new("struct nfq_packet *[?]", MAX_SLOT_ARRAYS)
local slot_array_number, slot_arrays_used = {}, 0
local moved_packets = {}

--- The value that the first slot's packets of a queue's slot array start
-- from. Slot arrays are never freed (a closed queue's go to the next one
-- opened), so one seen before keeps its number.
local function slot_array_base(pkts)
	local key = tonumber(ffi_cast(uintptr_t, pkts))
	local n = slot_array_number[key]
	if not n then
		if slot_arrays_used == MAX_SLOT_ARRAYS then
			error(("nfq: more than %d queues were opened in this Lua state"):format(MAX_SLOT_ARRAYS), 3)
		end
		n = slot_arrays_used
		slot_arrays_used = n + 1
		slot_arrays[n] = pkts
		slot_array_number[key] = n
	end
	return n * SLOT_ARRAY_SCALE
end

-- The C packet behind a Lua packet, or nil once it is gone: a slot is alive
-- until its callback returns, a retained copy until it is collected.
local function resolve(pkt)
	if ffi_istype(packet_ref_t, pkt) then
		local v = tonumber(ffi_cast(uintptr_t, pkt))
		local gen = v % SLOT_SCALE
		local slot = (v - gen) / SLOT_SCALE
		local index = slot % SLOTS_PER_ARRAY
		local p = slot_arrays[(slot - index) / SLOTS_PER_ARRAY] + index
		if p.gen == gen and p.state ~= PKT_MOVED then
			return p
		end
		return moved_packets[v]
	end
	local p = pkt.p
	if p.gen == pkt.gen then return p end
	return nil
end

local function live(pkt, level)
	local p = resolve(pkt)
	if p == nil then
		error("nfq: this packet is gone: its callback returned, so it got its verdict; "
			.. "call pkt:retain() inside the callback to keep it", level or 3)
	end
	return p
end

--- The struct nfq_packet behind a live Lua packet, for specs and tools; not a public API.
-- level blames a caller for a packet that is gone, as error() counts from the caller.
function _M._c_packet(pkt, level)
	return live(pkt, level and level + 2)
end

local function payload_of(p)
	if band(p.flags, PF_PAYLOAD_SET) ~= 0 then
		return ffi_cast(const_bytes_t, p.new_payload), p.new_payload_len
	end
	return p.payload, p.payload_len
end

local function payload_or_error(pkt, level)
	local p = live(pkt, level and level + 1)
	local data, len = payload_of(p)
	if data == nil then
		error(("nfq: packet %d has no payload: the queue copies metadata only "
			.. "(bind with mode = nfq.COPY_PACKET)"):format(p.id), level or 3)
	end
	return data, len
end

function Packet:get_payload()
	return ffi_string(payload_or_error(self))
end

--- Zero-copy view: a const uint8_t* to the first payload byte, and the length.
function Packet:view()
	return payload_or_error(self)
end

function Packet:get_payload_len()
	local _, len = payload_of(live(self))
	return len
end

local function check_pending(pkt, p)
	if p.state ~= PKT_PENDING then
		error(("nfq: packet %d already has a verdict"):format(pkt.id), 3)
	end
end

--- Replace the packet with a string or the bytes of a packet buffer.
function Packet:set_payload(data)
	local p = live(self)
	local bytes, len = data, nil
	if type(data) == "string" then
		len = #data
	elseif ffi_istype(buffer_t, data) then
		bytes, len = buffer_bytes(data, 3)
	else
		error("nfq: set_payload expects a string or a packet buffer, got " .. shown(data), 2)
	end
	check_pending(self, p)
	if C.nfq_packet_set_payload(p, bytes, len) ~= 0 then
		local e = ffi_errno()
		if e == EMSGSIZE then
			error(("nfq: a payload of %d bytes is larger than a verdict can carry (65531)"):format(len), 2)
		end
		error("nfq: set_payload: " .. strerror(e), 2)
	end
end

function Packet:set_mark(mark)
	local p = live(self)
	check_int(mark, 0, 0xffffffff, "mark", 2)
	check_pending(self, p)
	p.new_mark = mark
	p.flags = bor(p.flags, PF_MARK_SET)
end

function Packet:get_mark()
	local p = live(self)
	if band(p.flags, PF_MARK_SET) ~= 0 then
		return tonumber(p.new_mark)
	end
	return tonumber(p.mark)
end

function Packet:get_hw()
	local p = live(self)
	if band(p.flags, PF_HW) == 0 then return nil end
	return ffi_string(p.hw_addr, p.hw_addrlen)
end

function Packet:get_timestamp()
	local p = live(self)
	if band(p.flags, PF_TIMESTAMP) == 0 then return 0.0 end
	return tonumber(p.ts_sec) + tonumber(p.ts_usec) * 1e-6
end

local function release_retained(pkt)
	C.nfq_packet_release(pkt.p)
end

local function release_moved(pkt)
	local v = tonumber(ffi_cast(uintptr_t, pkt))
	local copy = moved_packets[v]
	moved_packets[v] = nil
	if copy then C.nfq_packet_release(copy) end
end

function Packet:retain()
	local p = live(self)
	if band(p.flags, PF_RETAINED) ~= 0 then return self end
	local copy = C.nfq_packet_retain(p)
	if copy == nil then
		error("nfq: retain: out of memory", 2)
	end
	if copy ~= p then -- a slot was copied: this object owns the copy
		if ffi_istype(packet_ref_t, self) then
			moved_packets[tonumber(ffi_cast(uintptr_t, self))] = copy
			ffi_gc(self, release_moved)
		else
			self.p = copy
			self.gen = copy.gen
			ffi_gc(self, release_retained)
		end
	end
	return self
end

local function give_verdict(pkt, verdict)
	local p = live(pkt)
	if p.queue == nil then
		error(("nfq: packet %d: its queue was unbound or closed, which gave it the fallback verdict"):format(p.id), 3)
	end
	if C.nfq_packet_verdict(p, verdict) ~= 0 then
		local e = ffi_errno()
		if e == EALREADY then
			error(("nfq: packet %d already has a verdict"):format(p.id), 3)
		end
		error(("nfq: verdict for packet %d: %s"):format(p.id, strerror(e)), 3)
	end
end

function Packet:accept() give_verdict(self, NF_ACCEPT) end
function Packet:drop() give_verdict(self, NF_DROP) end
Packet["repeat"] = function(self) give_verdict(self, NF_REPEAT) end
--- `repeat` is a Lua keyword: pkt:rerun() is the same verdict.
Packet.rerun = Packet["repeat"]

local describe_buf = ffi.new("char[64]")

-- The library queue whose callback runs now (set by q:run), the daemon's or
-- an offline run's queue (_set_send_queue), and the one nfq.stats() reads
-- (_adopt).
local running_queue, default_send_queue, adopted_queue

-- Library queues bound with send = true: nfq.send outside a callback takes
-- the only one.
local send_queues = setmetatable({}, { __mode = "k" })

local SEND_OFF = "sending is off: run nfqlua with --send (in library mode, bind the queue with send = true; "
	.. "in nfq.testing.run, opts.send = true)"

local reject_kinds = {
	["tcp-reset"] = C.NFQ_REJECT_TCP_RESET,
	-- an IPS's "reject both": the sender's reset, then the destination's
	["tcp-reset-both"] = bor(C.NFQ_REJECT_TCP_RESET, C.NFQ_REJECT_TO_DESTINATION),
	["icmp-port-unreachable"] = C.NFQ_REJECT_PORT_UNREACHABLE,
	["icmp-host-unreachable"] = C.NFQ_REJECT_HOST_UNREACHABLE,
	["icmp-net-unreachable"] = C.NFQ_REJECT_NET_UNREACHABLE,
	["icmp-admin-prohibited"] = C.NFQ_REJECT_ADMIN_PROHIBITED,
	["icmp-host-prohibited"] = C.NFQ_REJECT_HOST_PROHIBITED,
	["icmp-net-prohibited"] = C.NFQ_REJECT_NET_PROHIBITED,
	-- ip6tables' names, for the same answers
	["icmp6-port-unreachable"] = C.NFQ_REJECT_PORT_UNREACHABLE,
	["icmp6-addr-unreachable"] = C.NFQ_REJECT_HOST_UNREACHABLE,
	["icmp6-no-route"] = C.NFQ_REJECT_NET_UNREACHABLE,
	["icmp6-adm-prohibited"] = C.NFQ_REJECT_ADMIN_PROHIBITED,
}
local reject_names = {}
for name in pairs(reject_kinds) do reject_names[#reject_names + 1] = name end
table.sort(reject_names)
local REJECT_MAX_LEN = C.NFQ_REJECT_MAX_LEN
local REJECT_VERIFY_CSUM, REJECT_ENOTTCP = C.NFQ_REJECT_VERIFY_CSUM, C.NFQ_REJECT_ENOTTCP
local REJECT_TO_DESTINATION = C.NFQ_REJECT_TO_DESTINATION
local SKB_CSUMNOTREADY = 1
-- The answers, built here and copied by nfq_queue_send: the sender's, and
-- tcp-reset-both's reset for the destination.
local reject_buf = ffi.new("uint8_t[?]", REJECT_MAX_LEN)
local reject_peer_buf = ffi.new("uint8_t[?]", REJECT_MAX_LEN)

--- Drop the packet and answer its sender as iptables REJECT does (with
-- "tcp-reset-both", reset its destination too): true, or nil and why no
-- answer was sent (the packet is dropped all the same).
-- After its first C call it reads nothing more from self: the JIT can then
-- leave the packet object unallocated (see README, Sending and rejecting).
function Packet:reject(how)
	local p = live(self)
	local id = self.id
	local kind = C.NFQ_REJECT_DEFAULT
	if how ~= nil then
		kind = reject_kinds[how]
		if not kind then
			error(("nfq: reject: unknown answer %s; the answers are %s"):format(shown(how),
				table.concat(reject_names, ", ")), 2)
		end
	end
	check_pending(self, p)
	local q = p.queue
	if q == nil then
		error(("nfq: packet %d: its queue was unbound or closed, which gave it the fallback verdict"):format(id), 2)
	end
	if q.sender == nil then
		error("nfq: reject: " .. SEND_OFF, 2)
	end
	if p.payload == nil then
		error(("nfq: reject: packet %d has no payload to answer: the queue copies metadata only "
			.. "(bind with mode = nfq.COPY_PACKET)"):format(id), 2)
	end
	-- A local packet's checksum may be left to the device: not checked then.
	if band(p.flags, PF_SKBINFO) == 0 or band(p.skbinfo, SKB_CSUMNOTREADY) == 0 then
		kind = bor(kind, REJECT_VERIFY_CSUM)
	end
	local both = band(kind, REJECT_TO_DESTINATION) ~= 0
	local n = C.nfq_reject_build(reject_buf, REJECT_MAX_LEN, p.payload, p.payload_len,
		band(kind, bnot(REJECT_TO_DESTINATION)))
	if n == REJECT_ENOTTCP then
		error(("nfq: reject: %s answers TCP segments only, and packet %d is not one; "
			.. "give an ICMP answer instead"):format(how, id), 2)
	end
	-- It passes the same checks as the sender's reset, so it fails only with it.
	local peer_n = both and C.nfq_reject_build(reject_peer_buf, REJECT_MAX_LEN, p.payload, p.payload_len, kind)
	if C.nfq_packet_verdict(p, NF_DROP) ~= 0 then
		error(("nfq: verdict for packet %d: %s"):format(id, strerror(ffi_errno())), 2)
	end
	if n < 0 then
		return nil, ffi_string(C.nfq_reject_strerror(n)) .. " (the packet was dropped)"
	end
	-- An IPv6 link-local sender is answered on the interface its packet came in on.
	if C.nfq_queue_send(q, reject_buf, n, 0, 0, p.indev) ~= 0 then
		return nil, ffi_string(q.errmsg) .. " (the packet was dropped)"
	end
	-- The destination's reset leaves by the interface the packet was going out on.
	if both and C.nfq_queue_send(q, reject_peer_buf, peer_n, 0, 0, p.outdev) ~= 0 then
		return nil, ffi_string(q.errmsg) .. " (the packet was dropped, its sender answered)"
	end
	return true
end

local function describe(pkt)
	local p = resolve(pkt)
	if p == nil then
		return "packet (gone)"
	end
	local data, len = payload_of(p)
	if data == nil or len == 0 then
		return ("packet %d, no payload"):format(p.id)
	end
	C.nfq_describe(data, len, describe_buf, 64)
	return ffi_string(describe_buf)
end

function Packet:stop() give_verdict(self, NF_STOP) end

--- Send the packet to another queue; with bypass, accept it if nobody
-- listens there.
function Packet:queue(queue_num, bypass)
	check_int(queue_num, 0, 65535, "queue_num", 2)
	give_verdict(self, NF_QUEUE + queue_num * QUEUE_NUM_SCALE + (bypass and NF_QUEUE_BYPASS or 0))
end

--- Set the connection's mark with the verdict (the queue needs conntrack = true).
function Packet:set_connmark(mark)
	local p = live(self)
	check_int(mark, 0, 0xffffffff, "connmark", 2)
	check_pending(self, p)
	if p.queue == nil or band(p.queue.flags, FLAG_CONNTRACK) == 0 then
		error("nfq: set_connmark needs a queue bound with conntrack = true", 2)
	end
	p.new_connmark = mark
	p.flags = bor(p.flags, PF_CONNMARK_SET)
end

--- Accept the packet with the queue's bypass mark set in its mark (the bits
-- of bypass_mask, other bits kept), which CONNMARK rules save on the
-- connection so that its later packets skip the queue (README, Bypass). On
-- a queue bound with conntrack = true, the connection's mark gets the same
-- bits with the verdict.
function Packet:bypass()
	local p = live(self)
	check_pending(self, p)
	local q = p.queue
	if q == nil then
		error(("nfq: packet %d: its queue was unbound or closed, which gave it the fallback verdict"):format(p.id), 2)
	end
	local mark, keep = q.bypass_mark, bnot(q.bypass_mask)
	local flags = p.flags
	local old = band(flags, PF_MARK_SET) ~= 0 and p.new_mark or p.mark
	p.new_mark = bor(band(old, keep), mark)
	flags = bor(flags, PF_MARK_SET)
	if band(q.flags, FLAG_CONNTRACK) ~= 0 and band(flags, PF_CT) ~= 0 then
		local ct = band(flags, PF_CONNMARK_SET) ~= 0 and p.new_connmark or p.ct_mark
		p.new_connmark = bor(band(ct, keep), mark)
		flags = bor(flags, PF_CONNMARK_SET)
	end
	p.flags = flags
	give_verdict(self, NF_ACCEPT)
end

function Packet:get_l2hdr()
	local p = live(self)
	if p.l2hdr == nil then return nil end
	return ffi_string(p.l2hdr, p.l2hdr_len)
end

--- Set lengths and checksums of the payload given to set_payload().
function Packet:fix_checksums()
	local p = live(self)
	if band(p.flags, PF_PAYLOAD_SET) == 0 then
		error("nfq: fix_checksums works on the payload given to set_payload(); call that first", 2)
	end
	if C.nfq_fix_checksums(p.new_payload, p.new_payload_len) ~= 0 then
		error("nfq: fix_checksums: the payload is not an IPv4 or IPv6 packet", 2)
	end
end

-- Header views over the current payload (the rewritten one after
-- set_payload): nil when the bytes are not a whole header of that kind.
function Packet:ip() return headers.ipv4(payload_of(live(self))) end
function Packet:ip6() return headers.ipv6(payload_of(live(self))) end
function Packet:transport()
	local data, len = payload_of(live(self))
	return headers.transport(C, data, len)
end
function Packet:udp()
	local data, len = payload_of(live(self))
	return (headers.udp(C, data, len))
end
function Packet:tcp()
	local data, len = payload_of(live(self))
	return (headers.tcp(C, data, len))
end
function Packet:icmp()
	local data, len = payload_of(live(self))
	return (headers.icmp(C, data, len))
end

if not pcall(function() return ffi.C.nfq_if_indextoname end) then
	ffi.cdef [[char *nfq_if_indextoname(unsigned ifindex, char *name) asm("if_indextoname");]]
end
local ifname_buf = ffi.new("char[16]")
local ifname_cache = {}
local IFNAME_TTL = 10

--- The name of an interface index, or nil; cached for 10 seconds, so a
-- packet path that asks for names makes no system call per packet.
function _M.ifname(index)
	if not index or index == 0 then return nil end
	local hit = ifname_cache[index]
	local now = os.time()
	if hit and now - hit[2] < IFNAME_TTL then return hit[1] or nil end
	local name = ffi.C.nfq_if_indextoname(index, ifname_buf)
	name = name ~= nil and ffi_string(name) or false
	ifname_cache[index] = { name, now }
	return name or nil
end
local ifname = _M.ifname

function Packet:get_indev_name() return ifname(live(self).indev) end
function Packet:get_outdev_name() return ifname(live(self).outdev) end
function Packet:get_physindev_name() return ifname(live(self).physindev) end
function Packet:get_physoutdev_name() return ifname(live(self).physoutdev) end

local ct_states = { [0] = "established", "related", "new", "established", "related", [7] = "untracked" }

local function flagged(flag, get)
	return function(p)
		if band(p.flags, flag) ~= 0 then return get(p) end
	end
end

-- Kernel metadata read as fields: pkt.indev, pkt.uid, pkt.ct_state...
local metadata = {
	id = function(p) return p.id end,
	mark = function(p) return p.mark end,
	hw_protocol = function(p) return p.hw_protocol end,
	hook = function(p) return p.hook end,
	indev = function(p) return p.indev end,
	outdev = function(p) return p.outdev end,
	physindev = function(p) return p.physindev end,
	physoutdev = function(p) return p.physoutdev end,
	uid = flagged(PF_UID, function(p) return p.uid end),
	gid = flagged(PF_GID, function(p) return p.gid end),
	secctx = function(p)
		if p.secctx ~= nil then return ffi_string(p.secctx, p.secctx_len) end
	end,
	ct_state = flagged(PF_CT_INFO, function(p) return ct_states[p.ct_info] end),
	ct_reply = flagged(PF_CT_INFO, function(p) return p.ct_info == 3 or p.ct_info == 4 end),
	ct_mark = flagged(PF_CT, function(p) return tonumber(p.ct_mark) end),
	ct_id = flagged(PF_CT, function(p) return tonumber(p.ct_id) end),
	ct_status = flagged(PF_CT, function(p) return tonumber(p.ct_status) end),
	vlan_id = flagged(PF_VLAN, function(p) return band(p.vlan_tci, 0xfff) end),
	vlan_priority = flagged(PF_VLAN, function(p) return rshift(p.vlan_tci, 13) end),
	vlan_proto = flagged(PF_VLAN, function(p) return p.vlan_proto end),
	cap_len = function(p) return p.cap_len end,
	truncated = function(p) return p.cap_len > p.payload_len end,
	priority = flagged(PF_PRIORITY, function(p) return p.priority end),
	csum_not_ready = flagged(PF_SKBINFO, function(p) return band(p.skbinfo, 1) ~= 0 end),
	gso = flagged(PF_SKBINFO, function(p) return band(p.skbinfo, 2) ~= 0 end),
	csum_not_verified = flagged(PF_SKBINFO, function(p) return band(p.skbinfo, 4) ~= 0 end),
}

local packet_mt = {
	__index = function(pkt, k)
		local get = metadata[k]
		if get then return get(live(pkt)) end
		return Packet[k]
	end,
	__tostring = describe,
}
local packet_t = ffi.metatype("struct nfq_lua_packet", packet_mt)
ffi.metatype("struct nfq_lua_packet_ref", packet_mt)

--------------------------------------------------------------------------
-- Packet buffers
--------------------------------------------------------------------------

-- Buffers come from one pool per Lua state (src/nfq_buffer.c) and go back
-- to it at the end of each packet callback (recycle_buffers, from dispatch):
-- every buffer made since the last recycling, unless b:retain() kept it
-- until b:release() or its collection. A handle is a pointer-typed value,
-- not a struct (see struct nfq_lua_buffer): the buffer's index in the pool
-- times 2^32 plus the generation the buffer had when it was lent, so a stale
-- handle raises instead of reading bytes that belong to another packet.
local buffer_pool = C.nfq_buffer_pool_new()
if buffer_pool == nil then
	error("nfq: cannot allocate the packet buffer pool: out of memory", 2)
end
ffi_gc(buffer_pool, C.nfq_buffer_pool_close)
local pool_buffers = buffer_pool.all

local BUFFER_SIZE, MAX_IN_USE, MAX_PIECES = C.NFQ_BUFFER_SIZE, C.NFQ_BUFFER_MAX_IN_USE, C.NFQ_BUILD_MAX_PIECES
local BUF_LENT, BUF_KEPT, BUILD_REVERSE = C.NFQ_BUF_LENT, C.NFQ_BUF_KEPT, C.NFQ_BUILD_REVERSE
local ENOBUFS = 105
local HANDLE_SCALE = 2 ^ 32
local bytes_t = ffi.typeof("uint8_t *")
buffer_t = ffi.typeof("struct nfq_lua_buffer *")
-- Scratch space of the split and fragment calls, allocated once.
local pieces = ffi.new("struct nfq_buffer *[?]", MAX_PIECES)
local cuts = ffi.new("uint32_t[?]", MAX_PIECES)
local BUILD_ERR_LEN = 256
local build_err = ffi.new("char[?]", BUILD_ERR_LEN)

local Buffer = {}

local function handle_of(b)
	return ffi_cast(buffer_t, b.index * HANDLE_SCALE + b.gen)
end

-- The C buffer behind a handle, and the handle's generation.
local function decode(h)
	local v = tonumber(ffi_cast(uintptr_t, h))
	local gen = v % HANDLE_SCALE
	return pool_buffers[(v - gen) / HANDLE_SCALE], gen
end

-- The C buffer behind a handle, if the handle is not stale.
local function buffer_of(h, level)
	local b, gen = decode(h)
	if b.gen ~= gen then
		error("nfq: this packet buffer is gone: it went back to the pool when the packet callback that made it "
			.. "returned, or at b:release(); call b:retain() to keep a buffer longer", level or 3)
	end
	return b
end

buffer_bytes = function(h, level)
	local b = buffer_of(h, level + 1)
	return b.data, b.len
end

--- Every buffer made since the last recycling and not retained goes back
-- to the pool: what the end of each packet callback does.
local function recycle_buffers()
	if buffer_pool.lent_list ~= nil then
		C.nfq_buffer_recycle(buffer_pool)
	end
end
_M.recycle_buffers = recycle_buffers
_M._buffer_pool = buffer_pool -- for specs: its in_use and allocated counts; not a public API

-- n buffers from the pool into pieces[0..n-1].
local function take_buffers(n, what, level)
	if C.nfq_buffer_get(buffer_pool, n, pieces) ~= 0 then
		if ffi_errno() == ENOBUFS then
			error(("nfq: %s: %d packet buffers are in use, the most there can be: release the ones you "
				.. "retained (b:release())"):format(what, MAX_IN_USE), level + 1)
		end
		error(("nfq: %s: out of memory"):format(what), level + 1)
	end
end

local function new_buffer(data, len, what, level)
	take_buffers(1, what, level + 1)
	local b = pieces[0]
	ffi_copy(b.data, data, len)
	b.len = len
	return handle_of(b)
end

--- The bytes of a packet given as a string, a packet buffer or a packet, or
-- (with len) a pointer: ptr, length.
local function packet_bytes(x, len, what, level)
	if type(x) == "string" then
		return x, #x
	elseif ffi_istype(buffer_t, x) then
		return buffer_bytes(x, level + 1)
	elseif ffi_istype(packet_ref_t, x) or ffi_istype(packet_t, x) then
		return payload_or_error(x, level + 1)
	elseif type(x) == "cdata" and len ~= nil then
		return x, check_int(len, 0, BUFFER_SIZE, what .. ": the length", level + 1)
	end
	error(("nfq: %s expects a packet (a string, a packet buffer, a packet, or a pointer and a length), got %s")
		:format(what, shown(x)), level + 1)
end

--- A packet buffer: a copy of bytes (a string, a buffer, a packet, or a
-- pointer and a length), or len zero bytes.
function _M.buffer(data, len)
	if type(data) == "number" then
		check_int(data, 0, BUFFER_SIZE, "nfq.buffer: the length", 2)
		take_buffers(1, "nfq.buffer", 2)
		local b = pieces[0]
		ffi_fill(b.data, data)
		b.len = data
		return handle_of(b)
	end
	local bytes, n = packet_bytes(data, len, "nfq.buffer", 2)
	if n > BUFFER_SIZE then
		error(("nfq: nfq.buffer: %d bytes are more than a buffer holds (%d)"):format(n, BUFFER_SIZE), 2)
	end
	return new_buffer(bytes, n, "nfq.buffer", 2)
end

-- DNS, TLS, QUIC and HTTP parsers and the DNS answer builder (nfq.names).
do
	local names = require("nfq.names").bind(C, packet_bytes, _M.buffer, function(x)
		return ffi_istype(buffer_t, x) or ffi_istype(packet_ref_t, x) or ffi_istype(packet_t, x)
	end)
	_M.dns, _M.tls_client_hello, _M.quic_initial = names.dns, names.tls_client_hello, names.quic_initial
	_M.http_request, _M.dns_reply = names.http_request, names.dns_reply
end

--- A packet buffer holding a copy of the packet (after set_payload, of the
-- new one).
function Packet:copy()
	local data, len = payload_or_error(self, 2)
	return new_buffer(data, len, "pkt:copy", 2)
end

--- Zero-copy view: a const uint8_t* to the first byte, and the length.
function Buffer:view()
	local b = buffer_of(self)
	return ffi_cast(const_bytes_t, b.data), b.len
end

--- The same, writable: for payload bytes and options the views do not name.
function Buffer:data()
	local b = buffer_of(self)
	return ffi_cast(bytes_t, b.data), b.len
end

function Buffer:bytes()
	local b = buffer_of(self)
	return ffi_string(b.data, b.len)
end

function Buffer:len()
	return buffer_of(self).len
end

--- Cut or grow the packet to n bytes; grown bytes are zeros. Length fields
-- stay as they are until fix_checksums().
function Buffer:set_len(n)
	local b = buffer_of(self)
	check_int(n, 0, BUFFER_SIZE, "the buffer length", 2)
	if n > b.len then
		ffi_fill(b.data + b.len, n - b.len)
	end
	b.len = n
end

function Buffer:copy()
	local b = buffer_of(self)
	return new_buffer(b.data, b.len, "b:copy", 2)
end

--- Set IP lengths and every checksum after an edit.
function Buffer:fix_checksums()
	local b = buffer_of(self)
	if C.nfq_fix_checksums(b.data, b.len) ~= 0 then
		error("nfq: fix_checksums: the buffer does not hold an IPv4 or IPv6 packet", 2)
	end
end

-- Writable header views: nil when the bytes are not a whole header.
function Buffer:ip()
	local b = buffer_of(self)
	return headers.ipv4_writable(b.data, b.len)
end
function Buffer:ip6()
	local b = buffer_of(self)
	return headers.ipv6_writable(b.data, b.len)
end
function Buffer:transport()
	local b = buffer_of(self)
	return headers.transport(C, b.data, b.len)
end
function Buffer:udp()
	local b = buffer_of(self)
	return (headers.udp_writable(C, b.data, b.len))
end
function Buffer:tcp()
	local b = buffer_of(self)
	return (headers.tcp_writable(C, b.data, b.len))
end
function Buffer:icmp()
	local b = buffer_of(self)
	return (headers.icmp_writable(C, b.data, b.len))
end

local function release_kept(h)
	local b, gen = decode(h)
	if b.gen == gen then
		C.nfq_buffer_release(b)
	end
end

--- Keep the buffer past its callback: until b:release(), or until it is
-- garbage-collected.
function Buffer:retain()
	local b = buffer_of(self)
	if b.state == BUF_LENT then
		C.nfq_buffer_keep(b)
		ffi_gc(self, release_kept)
	end
	return self
end

--- Give the buffer back to the pool now; it is gone from then on. Releasing
-- a buffer that is gone does nothing.
function Buffer:release()
	local b, gen = decode(self)
	if b.gen ~= gen then return end
	if b.state == BUF_KEPT then
		ffi_gc(self, nil)
	end
	C.nfq_buffer_release(b)
end

ffi.metatype("struct nfq_lua_buffer", {
	__index = Buffer,
	__len = function(h) return buffer_of(h, 2).len end,
	__tostring = function(h)
		local b, gen = decode(h)
		if b.gen ~= gen then return "packet buffer (gone)" end
		C.nfq_describe(b.data, b.len, describe_buf, 64)
		return ffi_string(describe_buf)
	end,
})

-- The offsets after the packet in nfq.tcp_split and nfq.ip_fragment, into
-- cuts; their number, and the options table that may end the list.
local function read_cuts(what, ...)
	local n = select("#", ...)
	local opts = n > 0 and select(n, ...) or nil
	if type(opts) == "table" then
		n = n - 1
	else
		opts = nil
	end
	if n >= MAX_PIECES then
		error(("nfq: %s: %d offsets make more than %d pieces"):format(what, n, MAX_PIECES), 3)
	end
	for i = 1, n do
		local cut = select(i, ...)
		if type(cut) ~= "number" or cut ~= floor(cut) or cut < 0 or cut > BUFFER_SIZE then
			check_int(cut, 0, BUFFER_SIZE, ("%s: offset %d"):format(what, i), 3)
		end
		cuts[i - 1] = cut
	end
	return n, opts
end

-- The new pieces as buffers, in pieces[0..count-1]: two or three without a table.
local function piece_buffers(count)
	local p = pieces
	if count == 2 then
		return handle_of(p[0]), handle_of(p[1])
	elseif count == 3 then
		return handle_of(p[0]), handle_of(p[1]), handle_of(p[2])
	end
	local list = {}
	for i = 0, count - 1 do
		list[i + 1] = handle_of(p[i])
	end
	return unpack(list, 1, count)
end

local split_opts = { overlap = true, reverse = true }

local function check_reverse(v, what)
	if v ~= nil and type(v) ~= "boolean" then
		error(("nfq: %s: reverse must be true or false, got %s"):format(what, shown(v)), 3)
	end
	return v and BUILD_REVERSE or 0
end

--- The segments of one TCP segment cut at the payload offsets given, as
-- packet buffers; options (a table after the offsets): overlap (bytes each
-- piece after the first starts early), reverse (last piece first).
function _M.tcp_split(packet, ...)
	local data, len = packet_bytes(packet, nil, "tcp_split", 2)
	local n, opts = read_cuts("tcp_split", ...)
	local overlap, flags = 0, 0
	if opts then
		check_opts(opts, split_opts, "tcp_split", 2)
		if opts.overlap ~= nil then
			overlap = check_int(opts.overlap, 0, BUFFER_SIZE, "tcp_split: overlap", 2)
		end
		flags = check_reverse(opts.reverse, "tcp_split")
	end
	take_buffers(n + 1, "tcp_split", 2)
	if C.nfq_build_tcp_split(data, len, cuts, n, overlap, flags, pieces, build_err, BUILD_ERR_LEN) < 0 then
		C.nfq_buffer_release_many(pieces, n + 1)
		error("nfq: tcp_split: " .. ffi_string(build_err), 2)
	end
	return piece_buffers(n + 1)
end

local fragment_opts = { reverse = true, id = true }

--- The fragments of an IPv4 or IPv6 packet cut at the offsets given (in its
-- fragmentable part, multiples of 8), as packet buffers; options: reverse,
-- id (IPv6: the Fragment header's identification; a new one by default).
function _M.ip_fragment(packet, ...)
	local data, len = packet_bytes(packet, nil, "ip_fragment", 2)
	local n, opts = read_cuts("ip_fragment", ...)
	local flags, id = 0, nil
	if opts then
		check_opts(opts, fragment_opts, "ip_fragment", 2)
		if opts.id ~= nil then
			id = check_int(opts.id, 0, 0xffffffff, "ip_fragment: id", 2)
		end
		flags = check_reverse(opts.reverse, "ip_fragment")
	end
	take_buffers(n + 1, "ip_fragment", 2)
	local rc = C.nfq_build_ip_fragment(data, len, cuts, n, id or C.nfq_build_fragment_id(), flags, pieces,
		build_err, BUILD_ERR_LEN)
	if rc < 0 or (id and rshift(pieces[0].data[0], 4) == 4) then
		C.nfq_buffer_release_many(pieces, n + 1)
		if rc >= 0 then
			error("nfq: ip_fragment: id is the identification of an IPv6 Fragment header; IPv4 fragments "
				.. "keep the packet's id (set b:ip().id to change it)", 2)
		end
		error("nfq: ip_fragment: " .. ffi_string(build_err), 2)
	end
	return piece_buffers(n + 1)
end

--------------------------------------------------------------------------
-- Queues
--------------------------------------------------------------------------

local Queue = {}
Queue.__index = Queue

local function queue_of(self, level)
	local q = self.q
	if q == nil then
		error("nfq: this queue is closed", level + 1)
	end
	return q
end

--- Give every packet of the current batch to the callback. An error leaves
-- q.pos after the failed packet, so the caller can finish it and go on.
local function dispatch(self)
	local q = self.q
	local cb = self.callback
	local pkts = self.pkts
	local base = self.ref_base
	while q.pos < q.count do
		local i = q.pos
		q.pos = i + 1
		local p = pkts + i
		cb(ffi_cast(packet_ref_t, base + i * SLOT_SCALE + p.gen))
		C.nfq_packet_finish(p)
		recycle_buffers()
	end
end
Queue._dispatch = dispatch

local new_opts = { sockfd = true }

function _M.new(opts)
	opts = check_opts(opts, new_opts, "new", 2)
	local fd = -1
	if opts.sockfd ~= nil then
		fd = check_int(opts.sockfd, 0, 0x7fffffff, "sockfd", 2)
	end
	local q = C.nfq_queue_open(fd)
	if q == nil then
		local e = ffi_errno()
		if fd >= 0 then
			error(("nfq: sockfd %d is not a usable NETLINK_NETFILTER socket: %s"):format(fd, strerror(e)), 2)
		end
		return nil, "cannot open a netfilter netlink socket: " .. strerror(e)
	end
	ffi_gc(q, C.nfq_queue_close)
	return setmetatable({ q = q }, Queue)
end

--- A Queue over a queue that C owns (the daemon's); it cannot unbind it.
function _M._adopt(qptr, callback)
	local q = ffi_cast(queue_ptr_t, qptr)
	adopted_queue = setmetatable({ q = q, pkts = q.pkts, ref_base = slot_array_base(q.pkts), callback = callback,
		queue_num = q.queue_num, adopted = true }, Queue)
	return adopted_queue
end

--- Give a packet handed over by a reload to the callback, as if it had just
-- arrived: it gets the fallback verdict unless the callback verdicts or
-- retains it. This object owns the packet from now on.
function Queue:_redeliver(packet_ptr)
	local p = ffi_cast(packet_ptr_t, packet_ptr)
	local pkt = ffi_gc(packet_t(p, p.gen, p.id, p.mark, p.hw_protocol, p.hook), release_retained)
	local ok, err = pcall(self.callback, pkt)
	C.nfq_packet_finish(p)
	recycle_buffers()
	if not ok then error(err, 0) end
end

local bind_opts = {
	max_len = true, mode = true, range = true, sock_len = true, fallback = true,
	fail_open = true, gso = true, conntrack = true, uid_gid = true, secctx = true,
	send = true, send_mark = true, send_mask = true, bypass_mark = true, bypass_mask = true,
}
-- Boolean bind options that set queue flags, with their defaults.
local flag_opts = {
	{ "fail_open", C.NFQ_FLAG_FAIL_OPEN, false },
	{ "gso", C.NFQ_FLAG_GSO, true },
	{ "conntrack", C.NFQ_FLAG_CONNTRACK, false },
	{ "uid_gid", C.NFQ_FLAG_UID_GID, false },
	{ "secctx", C.NFQ_FLAG_SECCTX, false },
}

-- The sender that bind options ask for: nil without send = true, or the
-- reason it could not be opened.
local function open_sender(opts, level)
	if opts.send ~= nil and type(opts.send) ~= "boolean" then
		error("nfq: send must be true or false, got " .. shown(opts.send), level + 1)
	end
	if not opts.send then
		if opts.send_mark ~= nil or opts.send_mask ~= nil then
			error("nfq: send_mark and send_mask go with send = true", level + 1)
		end
		return nil
	end
	local mark = check_int(opts.send_mark or 0, 0, 0xffffffff, "send_mark", level + 1)
	local mask = check_int(opts.send_mask or 0, 0, 0xffffffff, "send_mask", level + 1)
	local sender = C.nfq_sender_open(mark, mask, 1)
	if sender == nil then
		local e = ffi_errno()
		return ("cannot open the raw sockets that send = true needs: %s%s"):format(strerror(e),
			e == EPERM and " (they need root or CAP_NET_RAW)" or "")
	end
	return sender
end

-- The bind options' bypass mark and mask: the mask defaults to the mark,
-- both to NFQ_BYPASS_MARK.
local function check_bypass_mark(opts, level)
	local mark = check_int(opts.bypass_mark or C.NFQ_BYPASS_MARK, 0, 0xffffffff, "bypass_mark", level + 1)
	local mask = check_int(opts.bypass_mask or mark, 0, 0xffffffff, "bypass_mask", level + 1)
	if mask == 0 then
		error(("nfq: %s 0 sets no bit: give a mark with a bit set, such as 0x40000000")
			:format(opts.bypass_mask == 0 and "bypass_mask" or "bypass_mark"), level + 1)
	end
	if band(mark, bnot(mask)) ~= 0 then
		error(("nfq: bypass_mark 0x%x has bits outside bypass_mask 0x%x; give a mark inside the mask")
			:format(mark, mask), level + 1)
	end
	return mark, mask
end

function Queue:bind(queue_num, callback, opts)
	local q = queue_of(self, 2)
	if self.queue_num then
		error(("nfq: this queue object is already bound to queue %d; unbind it first"):format(self.queue_num), 2)
	end
	if self.deferred then
		error("nfq: bind: the queue unbinds when this callback returns; bind it again once run() has returned", 2)
	end
	check_int(queue_num, 0, 65535, "queue_num", 2)
	if not is_callable(callback) then
		error("nfq: bind: the callback must be a function or a callable table, got " .. shown(callback), 2)
	end
	opts = check_opts(opts, bind_opts, "bind", 2)
	local max_len = check_int(opts.max_len or 1024, 1, 0xffffffff, "max_len", 2)
	local mode = opts.mode or _M.COPY_PACKET
	if mode == _M.COPY_NONE then
		error("nfq: mode COPY_NONE delivers no packets (the kernel drops them); use COPY_META or COPY_PACKET", 2)
	end
	if mode ~= _M.COPY_META and mode ~= _M.COPY_PACKET then
		error("nfq: mode must be nfq.COPY_META or nfq.COPY_PACKET, got " .. shown(mode), 2)
	end
	local range = check_int(opts.range or 65535, 1, 65535, "range", 2)
	local sock_len = check_int(opts.sock_len or 0, 0, 0x7fffffff, "sock_len", 2)
	q.fallback = check_fallback(opts.fallback or "accept", 2)
	local flags = 0
	for _, f in ipairs(flag_opts) do
		local name, bit_value, default = f[1], f[2], f[3]
		local on = opts[name]
		if on == nil then on = default end
		if type(on) ~= "boolean" then
			error(("nfq: %s must be true or false, got %s"):format(name, shown(on)), 2)
		end
		if on then flags = bor(flags, bit_value) end
	end
	local bypass_mark, bypass_mask = check_bypass_mark(opts, 2)
	local sender = open_sender(opts, 2)
	if type(sender) == "string" then return nil, sender end
	if C.nfq_queue_bind(q, queue_num, mode, range, max_len, sock_len, flags) ~= 0 then
		C.nfq_sender_close(sender)
		return nil, ffi_string(q.errmsg)
	end
	C.nfq_queue_set_sender(q, sender)
	q.bypass_mark, q.bypass_mask = bypass_mark, bypass_mask
	send_queues[self] = sender ~= nil or nil
	self.callback = callback
	self.queue_num = queue_num
	-- The slot array lives as long as the queue: caching the pointer saves
	-- a cdata box per batch.
	self.pkts = q.pkts
	self.ref_base = slot_array_base(q.pkts)
	return true
end

-- Inside its own callback (run() is dispatching a batch), a queue cannot go
-- away under the packet being handled: unbind() and close() end the batch
-- with that packet, so that dispatching stops when its callback returns, and
-- run() then gives the rest of the batch the fallback verdict and unbinds or
-- closes (finish_deferred). The rest wait for the current packet's verdict:
-- a batch verdict accepts every packet up to its id.
local function defer(self, what)
	local q = self.q
	if not self.deferred then
		self.batch_end = q.count
		q.count = q.pos
	end
	if self.deferred ~= "close" then self.deferred = what end
end

local function finish_deferred(self)
	local q, what = self.q, self.deferred
	self.deferred = nil
	for i = q.count, self.batch_end - 1 do
		C.nfq_packet_finish(self.pkts + i)
	end
	C.nfq_queue_flush(q)
	if what == "close" then
		self.q = nil
		ffi_gc(q, nil)
		C.nfq_queue_close(q)
	elseif C.nfq_queue_unbind(q) ~= 0 then
		return nil, ffi_string(q.errmsg)
	end
	return true, false
end

function Queue:unbind()
	local q = self.q
	if q == nil or not self.queue_num then return true end
	if self.adopted then
		error("nfq: the daemon owns this queue; it cannot be unbound from a script", 2)
	end
	self.queue_num = nil
	self.callback = nil
	send_queues[self] = nil
	if self.dispatching then
		defer(self, "unbind")
		return true
	end
	if C.nfq_queue_unbind(q) ~= 0 then
		return nil, ffi_string(q.errmsg)
	end
	return true
end

function Queue:close()
	local q = self.q
	if q == nil then return end
	if self.adopted then
		error("nfq: the daemon owns this queue; it cannot be closed from a script", 2)
	end
	self.queue_num = nil
	self.callback = nil
	send_queues[self] = nil
	if self.dispatching then
		defer(self, "close")
		return
	end
	self.q = nil
	ffi_gc(q, nil)
	C.nfq_queue_close(q)
end

--- How pkt:bypass() keeps a flow out of this queue: "conntrack" (the
-- connection's mark goes with the verdict, on a queue bound with
-- conntrack = true) or "mark" (the packet's mark, for CONNMARK rules); and
-- the mark and mask it sets.
function Queue:bypass_path()
	local q = queue_of(self, 2)
	local path = band(q.flags, FLAG_CONNTRACK) ~= 0 and "conntrack" or "mark"
	return path, tonumber(q.bypass_mark), tonumber(q.bypass_mask)
end

function Queue:get_fd()
	return queue_of(self, 2).fd
end

--- Swap the callback; packets of the next batch go to the new one.
function Queue:set_callback(callback)
	if not is_callable(callback) then
		error("nfq: set_callback: the callback must be a function or a callable table, got " .. shown(callback), 2)
	end
	self.callback = callback
end

local POLLIN = 1
local pending_poll = ffi.new("struct nfq_pollfd")

-- Whether the socket holds more for run(): a packet, or an error (ENOBUFS)
-- that the next receive takes. Without waiting.
local function waiting(q)
	pending_poll.fd, pending_poll.events, pending_poll.revents = q.fd, POLLIN, 0
	return ffi.C.nfq_poll(pending_poll, 1, 0) > 0
end

--- Receive and dispatch: forever when block is true (the default), or what
-- is pending when it is false. With max_batches, it stops after that many
-- and says whether more waits in the socket then. A callback error is
-- re-raised after its packet got the fallback verdict; calling run() again
-- goes on with the rest. It returns once a callback has unbound or closed
-- the queue.
function Queue:run(block, max_batches)
	local q = queue_of(self, 2)
	if self.dispatching then
		error("nfq: run: called from inside this queue's callback, which run() is already serving; "
			.. "return from the callback and let that run() go on", 2)
	end
	if not self.queue_num then
		error("nfq: run: the queue is not bound; call q:bind() first", 2)
	end
	if max_batches ~= nil then
		check_int(max_batches, 1, 0x7fffffff, "max_batches", 2)
	end
	local timeout = (block == nil or block) and -1 or 0
	local batches = 0
	while true do
		if q.pos >= q.count then
			if batches == max_batches then
				return true, waiting(q)
			end
			local n = C.nfq_queue_receive(q, timeout)
			if n < 0 then
				if ffi_errno() ~= EINTR then
					return nil, ffi_string(q.errmsg)
				end
			elseif n == 0 and timeout == 0 then
				C.nfq_queue_flush(q)
				return true, false
			elseif n > 0 then
				batches = batches + 1
			end
		end
		self.dispatching = true
		local outer = running_queue
		running_queue = self
		local ok, err = pcall(dispatch, self)
		running_queue = outer
		self.dispatching = false
		if not ok then
			q.stats.script_errors = q.stats.script_errors + 1
			C.nfq_queue_finish_current(q)
			recycle_buffers()
			C.nfq_queue_flush(q)
			if self.deferred then finish_deferred(self) end
			error(err, 0)
		end
		C.nfq_queue_flush(q)
		if self.deferred then return finish_deferred(self) end
	end
end

local stat_names = {
	"received", "accepted", "dropped", "repeated", "requeued", "fallback",
	"verdict_errors", "enobufs", "sent", "send_errors", "script_errors", "script_timeouts", "reloads",
	"reload_failures",
}
_M.stat_names = stat_names

local kernel_stats = ffi.new("struct nfq_kernel_stats")

--- The queue's counters as a table of numbers, with the kernel's drop
-- counters for the queue (queue_dropped, user_dropped) while it is bound,
-- or as they were at its unbind.
function Queue:stats()
	local q = queue_of(self, 2)
	local s = q.stats
	local t = {}
	for i = 1, #stat_names do
		local k = stat_names[i]
		t[k] = tonumber(s[k])
	end
	if C.nfq_queue_kernel_stats(q, kernel_stats) == 0 then
		t.queue_dropped = tonumber(kernel_stats.queue_dropped)
		t.user_dropped = tonumber(kernel_stats.user_dropped)
	end
	return t
end

local queue_fields = { "queue", "portid", "waiting", "copy_mode", "copy_range",
	"queue_dropped", "user_dropped", "id_sequence" }

local CLOCK_MONOTONIC = 1
local now_ts = ffi.new("struct nfq_timespec")

-- Offline runs (--replay, nfq.testing) put scripts on the packets' clock:
-- while set, nfq.now() returns this time instead.
local offline_now

--- Seconds on a monotonic clock, with nanosecond resolution: for timeouts
-- and rates in scripts (os.clock is CPU time, os.time whole seconds).
function _M.now()
	if offline_now then return offline_now end
	ffi.C.nfq_clock_gettime(CLOCK_MONOTONIC, now_ts)
	return tonumber(now_ts.tv_sec) + tonumber(now_ts.tv_nsec) * 1e-9
end

--- The time of an offline run, or nil while nfq.now() reads the clock: for
-- code that reads the same clock in C (nfq.flows).
function _M._offline_now()
	return offline_now
end

--- For offline runs: the time nfq.now() returns from now on, or nil for the
-- real clock again.
function _M._set_now(t)
	offline_now = t
end

--- Every queue bound in this network namespace, from
-- /proc/net/netfilter/nfnetlink_queue: a table keyed by queue number.
function _M.queue_stats()
	local f, err = io.open("/proc/net/netfilter/nfnetlink_queue")
	if not f then return nil, err end
	local queues = {}
	for line in f:lines() do
		local q, i = {}, 0
		for n in line:gmatch("%d+") do
			i = i + 1
			if queue_fields[i] then q[queue_fields[i]] = tonumber(n) end
		end
		if q.queue then queues[q.queue] = q end
	end
	f:close()
	return queues
end

_M.ntop = headers.ntop
_M.csum_replace16 = headers.csum_replace16
_M.csum_replace32 = headers.csum_replace32

--------------------------------------------------------------------------
-- Sending
--------------------------------------------------------------------------

-- The longest packet there is: an IPv6 header and 65535 bytes of payload.
local MAX_SEND_LEN = 40 + 65535
local send_opts = { mark = true }

local function view_of(obj) return obj.view end

-- What nfq.send was given, as pointer, length and options: (string [, opts]),
-- (ptr, len [, opts]), or (object with view() [, opts]).
local function send_args(what, data, x, y, level)
	local t = type(data)
	if t == "string" and type(x) ~= "number" then return data, #data, x end
	if type(x) == "number" then
		if t ~= "cdata" then
			error(("nfq: %s: a length goes with a pointer (cdata), but the first argument is %s"):format(what, shown(data)),
				level + 1)
		end
		return data, check_int(x, 0, MAX_SEND_LEN, what .. ": the length", level + 1), y
	end
	if t == "cdata" or t == "table" or t == "userdata" then
		local found, view = pcall(view_of, data)
		if found and is_callable(view) then
			local ptr, len = view(data)
			return ptr, len, x
		end
		if t == "cdata" then
			error(("nfq: %s: a pointer needs its length: %s(ptr, len [, opts])"):format(what, what), level + 1)
		end
	end
	error(("nfq: %s expects a string, a packet or buffer (an object with view()), or a pointer and a length, got %s")
		:format(what, shown(data)), level + 1)
end

local function send_on(q, what, level, data, x, y)
	local ptr, len, opts = send_args(what, data, x, y, level + 1)
	local mark, has_mark = 0, 0
	if opts ~= nil then
		-- Without a loop over opts: a loop would end the JIT's trace here.
		local key = type(opts) == "table" and next(opts)
		if key == nil or (key == "mark" and next(opts, key) == nil) then
			mark = opts.mark
		else
			check_opts(opts, send_opts, what, level + 1)
		end
		if mark ~= nil then
			mark, has_mark = check_int(mark, 0, 0xffffffff, what .. ": mark", level + 1), 1
		else
			mark = 0
		end
	end
	if q.sender == nil then
		error(("nfq: %s: %s"):format(what, SEND_OFF), level + 1)
	end
	if C.nfq_queue_send(q, ptr, len, mark, has_mark, 0) ~= 0 then
		return nil, ffi_string(q.errmsg)
	end
	return true
end

--- Send a whole IPv4 or IPv6 packet through this queue's raw sockets (bind
-- with send = true): true, or nil and why. Inside a callback it leaves in
-- order with the batch's verdicts; outside, at once.
function Queue:send(data, x, y)
	return send_on(queue_of(self, 2), "q:send", 2, data, x, y)
end

-- The queue nfq.send sends through.
local function sending_queue(level)
	local queue = running_queue or default_send_queue
	if queue then return queue end
	local only, n = nil, 0
	for candidate in pairs(send_queues) do
		if candidate.q ~= nil then
			only, n = candidate, n + 1
		end
	end
	if n == 1 then return only end
	if n == 0 then
		error("nfq.send: outside a callback, it sends through the queue bound with send = true, and there is none", level + 1)
	end
	error(("nfq.send: %d queues are bound with send = true; call q:send() on the one to send from"):format(n), level + 1)
end

--- For the daemon and offline runs: the queue nfq.send uses, in callbacks
-- and outside them (on_start, on_timer, on_stop), or nil when the run is over.
function _M._set_send_queue(queue)
	default_send_queue = queue
end

--- Send a whole IPv4 or IPv6 packet: from the queue whose callback runs,
-- the daemon's queue, or the only library queue bound with send = true.
function _M.send(data, x, y)
	local queue = sending_queue(2)
	return send_on(queue_of(queue, 2), "nfq.send", 2, data, x, y)
end

--- In a daemon script: the daemon queue's counters, as q:stats() gives them.
function _M.stats()
	if not adopted_queue then
		error("nfq.stats() is for scripts run by the nfqlua daemon; call q:stats() on your queue", 2)
	end
	return adopted_queue:stats()
end

--- A flow table (lua/nfq/flows.lua; README.md, Flows).
function _M.flows(opts)
	local flows = require("nfq.flows").new(opts)
	return flows
end

--- In a daemon script: the daemon queue's bypass path, mark and mask, as
-- q:bypass_path() gives them.
function _M.bypass_path()
	if not adopted_queue then
		error("nfq.bypass_path() is for scripts run by the nfqlua daemon; call q:bypass_path() on your queue", 2)
	end
	return adopted_queue:bypass_path()
end

-- Domain and address sets (lua/nfq/sets.lua), loaded on first use.
function _M.domainset(source, opts) return require("nfq.sets").domainset(source, opts) end
function _M.ipset(source, opts) return require("nfq.sets").ipset(source, opts) end

--- Record packets to a pcap file without blocking: see nfq.pcap (lua/nfq/pcap.lua).
function _M.pcap(path, opts)
	return require("nfq.pcap").open(path, opts)
end

--- Counters and gauges the script defines, for Prometheus (lua/nfq/metric.lua).
_M.metric = require "nfq.metric"

registry["nfq.module"] = _M
return _M

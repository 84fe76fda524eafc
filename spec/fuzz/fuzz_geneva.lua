-- Fuzzing nfq.geneva's packet building: strategies (the fixtures' and
-- random ones from the grammar) applied through nfq.testing to hostile
-- packets (the fixtures' inputs truncated, flipped, with random TCP data
-- offsets and options, IPv4 options and odd IHLs, lying total lengths,
-- fragments, 65535-byte, tiny and IPv6 packets).
--
-- nfq.geneva writes through FFI pointers, which LuaJIT does not bound: a
-- wrong length would corrupt memory silently. So the harness loads a copy of
-- the module whose every ffi.new buffer (the strategy's slots and lengths,
-- the option scratch buffers, the md5 and random-load buffers) carries
-- canary bytes behind it, and each slot canaries past its 65535 bytes; after
-- every packet the canaries must be intact. Invariants besides: apply never
-- raises; a sent packet is 20 to 65535 bytes and its IPv4 total length its
-- length; checksums are valid where the input's were and no tamper of a
-- checksum (or of what the checksum covers) was asked; an inbound rewrite
-- keeps an honest total length unless IP:len was tampered.
--
-- As a module: run{ seed =, iterations = | seconds = } returns a report
-- (spec 35 runs a short one). As a script (make fuzz-geneva):
-- luajit spec/fuzz/fuzz_geneva.lua SECONDS [SEED].
local ffi = require "ffi"
local bit = require "bit"
local testing = require "nfq.testing"

local band, bor, rshift = bit.band, bit.bor, bit.rshift
local char, byte, sub, rep, concat = string.char, string.byte, string.sub, string.rep, table.concat

local M = {}

local SLOT, MAX_PACKET = 65536 + 1024, 65535
local GUARD = 64 -- canary elements behind each buffer
local CANARY = 0xa5

-- A fresh nfq.geneva whose buffers are guarded, and the list of guards.
local guards = {}
local real_new = ffi.new
local function guarded_new(ct, n, ...)
	local elem, count = ct:match("^([%w_]+)%[(%d+)%]$")
	if elem then
		count = tonumber(count)
	else
		elem = ct:match("^([%w_]+)%[%?%]$")
		count = n
	end
	if not elem or select("#", ...) > 0 then return real_new(ct, n, ...) end
	local buf = real_new(elem .. "[?]", count + GUARD)
	local size, extra = ffi.sizeof(elem) * count, ffi.sizeof(elem) * GUARD
	local bytes = ffi.cast("uint8_t *", buf)
	ffi.fill(bytes + size, extra, CANARY)
	local g = { bytes = bytes, size = size, extra = extra, keep = buf, name = ct }
	if elem == "uint8_t" and size % SLOT == 0 and size > 0 then
		g.slots = size / SLOT
		for s = 0, g.slots - 1 do ffi.fill(bytes + s * SLOT + MAX_PACKET, SLOT - MAX_PACKET, CANARY) end
	end
	guards[#guards + 1] = g
	return buf
end

local function with_guards(fn, ...)
	ffi.new = guarded_new
	local ok, a, b = pcall(fn, ...)
	ffi.new = real_new
	if not ok then error(a, 0) end
	return a, b
end

local saved = package.loaded["nfq.geneva"]
package.loaded["nfq.geneva"] = nil
local geneva = with_guards(require, "nfq.geneva")
package.loaded["nfq.geneva"] = saved
local module_guards = #guards
M.geneva = geneva

local canary_run = {}
local function canary_string(n)
	if not canary_run[n] then canary_run[n] = rep(char(CANARY), n) end
	return canary_run[n]
end

-- nil, or which buffer was written past and where.
local function broken_guard(list)
	for _, g in ipairs(list) do
		if ffi.string(g.bytes + g.size, g.extra) ~= canary_string(g.extra) then
			return ("a write past the end of %s (%d bytes)"):format(g.name, g.size)
		end
		if g.slots then
			for s = 0, g.slots - 1 do
				if ffi.string(g.bytes + s * SLOT + MAX_PACKET, SLOT - MAX_PACKET) ~= canary_string(SLOT - MAX_PACKET) then
					return ("a write past byte 65535 of slot %d of the strategy's store"):format(s)
				end
			end
		end
	end
	return nil
end

--------------------------------------------------------------------------
-- Checksums and layout (the checker's own, from the bytes)
--------------------------------------------------------------------------

local function u16(s, o) return byte(s, o + 1) * 256 + byte(s, o + 2) end
local function p16(v) return char(band(rshift(v, 8), 255), band(v, 255)) end

local function sum16(s, from, to, acc)
	for i = from, to - 1, 2 do
		acc = acc + byte(s, i + 1) * 256 + (i + 1 < to and byte(s, i + 2) or 0)
	end
	while acc > 0xffff do acc = band(acc, 0xffff) + rshift(acc, 16) end
	return acc
end

-- { ihl, tcp = header length or nil, honest = total length is the length } of an IPv4 packet, or nil.
local function layout(p)
	if #p < 20 or rshift(byte(p, 1), 4) ~= 4 then return nil end
	local ihl = band(byte(p, 1), 15) * 4
	if ihl < 20 or ihl > #p then return nil end
	local l = { ihl = ihl, honest = u16(p, 2) == #p, frag = band(u16(p, 6), 0x3fff) ~= 0 }
	if byte(p, 10) == 6 and not l.frag and #p >= ihl + 20 then
		local hl = rshift(byte(p, ihl + 13), 4) * 4
		if hl >= 20 and ihl + hl <= #p then l.tcp = hl end
	end
	return l
end

local function ip_sum_ok(p, ihl) return sum16(p, 0, ihl, 0) == 0xffff end
local function tcp_sum_ok(p, ihl)
	local seed = u16(p, 12) + u16(p, 14) + u16(p, 16) + u16(p, 18) + 6 + #p - ihl
	return sum16(p, ihl, #p, seed) == 0xffff
end

-- The packet with its IP (and TCP or UDP) checksums made right.
local function fix_sums(p)
	local l = layout(p)
	if not l then return p end
	local ihl = l.ihl
	p = sub(p, 1, 10) .. "\0\0" .. sub(p, 13)
	p = sub(p, 1, 10) .. p16(0xffff - sum16(p, 0, ihl, 0)) .. sub(p, 13)
	if l.tcp then
		p = sub(p, 1, ihl + 16) .. "\0\0" .. sub(p, ihl + 19)
		local seed = u16(p, 12) + u16(p, 14) + u16(p, 16) + u16(p, 18) + 6 + #p - ihl
		p = sub(p, 1, ihl + 16) .. p16(0xffff - sum16(p, ihl, #p, seed)) .. sub(p, ihl + 19)
	end
	return p
end

--------------------------------------------------------------------------
-- Hostile packets
--------------------------------------------------------------------------

local rnd = math.random -- seeded by run()

local function random_bytes(n)
	local t = {}
	for i = 1, n do t[i] = char(rnd(0, 255)) end
	return concat(t)
end

-- A TCP option list: valid, malformed, zero-length, EOL/NOP runs, oversized lengths.
local function random_options()
	local t = {}
	for _ = 1, rnd(0, 8) do
		local pick = rnd(1, 12)
		if pick == 1 then t[#t + 1] = "\2\4" .. p16(rnd(0, 65535))
		elseif pick == 2 then t[#t + 1] = "\3\3" .. char(rnd(0, 255))
		elseif pick == 3 then t[#t + 1] = "\4\2"
		elseif pick == 4 then t[#t + 1] = "\8\10" .. random_bytes(8)
		elseif pick == 5 then t[#t + 1] = "\19\18" .. random_bytes(16)
		elseif pick == 6 then t[#t + 1] = "\28\4" .. random_bytes(2)
		elseif pick == 7 then t[#t + 1] = rep("\1", rnd(1, 12))
		elseif pick == 8 then t[#t + 1] = rep("\0", rnd(1, 6))
		elseif pick == 9 then t[#t + 1] = char(rnd(2, 40), rnd(0, 1)) -- zero or one length
		elseif pick == 10 then t[#t + 1] = char(rnd(2, 40), rnd(41, 255)) .. random_bytes(rnd(0, 6)) -- oversized
		elseif pick == 11 then t[#t + 1] = char(rnd(0, 255), rnd(0, 255))
		else t[#t + 1] = "\14\3" .. char(rnd(0, 255)) end
	end
	return concat(t)
end

local function ip_options()
	local pick = rnd(1, 4)
	if pick == 1 then return "\148\4\0\0" end
	if pick == 2 then return rep("\1", rnd(1, 40)) end
	if pick == 3 then return "\131" .. char(rnd(0, 255)) .. random_bytes(rnd(0, 30)) end
	return random_bytes(rnd(1, 40))
end

local function set16(p, o, v) return sub(p, 1, o) .. p16(v % 65536) .. sub(p, o + 3) end

-- Rebuild an IPv4 packet from its parts with new IP options and/or TCP options.
local function rebuild(p)
	local l = layout(p)
	if not l then return p end
	local iphdr, rest = sub(p, 1, 20), sub(p, l.ihl + 1)
	if rnd(1, 3) == 1 then
		local opts = ip_options()
		if #opts > 40 then opts = sub(opts, 1, 40) end
		opts = opts .. rep("\0", (4 - #opts % 4) % 4)
		iphdr = char(0x40 + (20 + #opts) / 4) .. sub(iphdr, 2) .. opts
	else
		iphdr = sub(p, 1, l.ihl)
	end
	if l.tcp and rnd(1, 2) == 1 then
		local opts = random_options()
		local doff = rnd(5, 15)
		local room = doff * 4 - 20
		if #opts > room then opts = sub(opts, 1, room) else opts = opts .. rep("\1", room - #opts) end
		if room >= 4 and rnd(1, 2) == 1 then -- the header ends in an option whose length runs past it
			local kinds = { 2, 3, 5, 8, 14, 19, 28 }
			opts = sub(opts, 1, room - rnd(2, 3)) .. char(kinds[rnd(1, #kinds)], rnd(3, 40))
			opts = opts .. rep("\0", room - #opts)
		end
		local tcph = sub(rest, 1, 12) .. char(doff * 16 + band(byte(rest, 13), 15)) .. sub(rest, 14, 20)
		rest = tcph .. opts .. (rnd(1, 3) == 1 and "" or sub(rest, l.tcp + 1))
	end
	p = iphdr .. rest
	return set16(p, 2, #p)
end

local big_payload = rep("GET / HTTP/1.1\r\nHost: example.com\r\n", 2000)

local function with_payload(p, n)
	local l = layout(p)
	if not l then return p end
	local head = sub(p, 1, l.ihl + (l.tcp or (byte(p, 10) == 17 and 8) or 0))
	local body = sub(big_payload, 1, n - #head)
	if #body < n - #head then body = body .. rep("x", n - #head - #body) end
	p = head .. body
	p = set16(p, 2, #p)
	if byte(p, 10) == 17 and #head >= l.ihl + 8 then p = set16(p, l.ihl + 4, #p - l.ihl) end
	return p
end

function M.mutate(p, ipv6)
	local pick = rnd(1, 13)
	if pick == 1 or pick == 13 and rnd(1, 2) == 1 then
		p = with_payload(rebuild(p), MAX_PACKET - rnd(0, 1) * rnd(0, 8))
	elseif pick == 13 then
		p = rebuild(p)
	elseif pick == 2 then
		p = with_payload(rebuild(p), MAX_PACKET - rnd(0, 3) * rnd(0, 200))
	elseif pick == 3 then
		p = sub(p, 1, rnd(1, 40))
	elseif pick == 4 then
		p = ipv6[rnd(1, #ipv6)]
	elseif pick == 5 then -- an odd IHL
		p = char(0x40 + rnd(0, 15)) .. sub(p, 2)
	elseif pick == 6 then -- a total length that lies
		p = set16(p, 2, rnd(1, 3) == 1 and rnd(0, 65535) or #p + rnd(-30, 30))
	elseif pick == 7 then -- a fragment
		p = set16(p, 6, bor(rnd(0, 1) * 0x2000, rnd(0, 3) == 0 and 0 or rnd(1, 8191), rnd(0, 1) * 0x4000))
	elseif pick == 8 then
		p = with_payload(rebuild(p), rnd(20, 2000))
	end
	if rnd(1, 4) > 1 then p = fix_sums(p) end
	if rnd(1, 3) == 1 then -- byte flips, after the sums
		for _ = 1, rnd(1, 4) do
			local at = rnd(1, #p)
			p = sub(p, 1, at - 1) .. char(rnd(0, 255)) .. sub(p, at + 1)
		end
	end
	if rnd(1, 6) == 1 then p = sub(p, 1, rnd(1, #p)) end
	if #p > MAX_PACKET then p = sub(p, 1, MAX_PACKET) end
	return p
end

--------------------------------------------------------------------------
-- Random strategies from the grammar
--------------------------------------------------------------------------

local triggers = { "[TCP:flags:PA]", "[TCP:flags:A*]", "[IP:version:4]", "[IP:ttl:64]", "[TCP:dport:80]",
	"[UDP:dport:53]", "[IP:proto:6]", "[IP:proto:17]", "[TCP:options-mss:*]", "[TCP:options-timestamp:*]",
	"[TCP:load:*]", "[IP:load:*]", "[DNS:qdcount:1]", "[DNSQR:qtype:1]", "[IP:flags:*]", "[TCP:flags:S]",
	"[TCP:options-md5header:*]", "[TCP:dataofs:*]", "[TCP:options-wscale:]", "[IP:len:*]",
	"[DNSQR:qname:www.example.com.]", "[DNSQR:qname:*]", "[UDP:load:*]", "[IP:src:10.7.0.1]", "[TCP:options-uto:*]" }
local fields = {
	IP = { "version", "ihl", "tos", "len", "id", "flags", "frag", "ttl", "proto", "chksum", "src", "dst", "load" },
	TCP = { "sport", "dport", "seq", "ack", "dataofs", "reserved", "flags", "window", "chksum", "urgptr", "load",
		"options-eol", "options-nop", "options-mss", "options-wscale", "options-sackok", "options-sack",
		"options-timestamp", "options-altchksum", "options-altchksumopt", "options-md5header", "options-uto" },
	UDP = { "sport", "dport", "chksum", "len", "load" },
	DNS = { "id", "qr", "opcode", "aa", "tc", "rd", "ra", "z", "ad", "cd", "rcode", "qdcount", "ancount" },
	DNSQR = { "qtype", "qclass" },
}
local protos = { "IP", "TCP", "UDP", "DNS", "DNSQR", "TCP", "IP", "TCP" }
local sizes = { -2, -1, -1, 0, 1, 2, 3, 4, 7, 8, 13, 100, 1000, 8191, 8192, 70000 }

local function random_value(proto, field)
	if field == "load" then
		local pick = rnd(1, 5)
		if pick == 1 then return "" end
		if pick == 2 then return "__HTTP_REQUEST__" end
		if pick == 3 then return "__DNS_REQUEST__" end
		if pick == 4 then return rnd(1, 2) == 1 and rep("%41", rnd(1, 30000)) or rep("x", rnd(65000, 66000)) end
		return rep("ab", rnd(1, 100))
	elseif field == "options-md5header" then
		return rep("ab", rnd(0, 16))
	elseif field:find("^options%-") then
		local how = field:match("options%-(.*)")
		if how == "mss" or how == "wscale" or how == "timestamp" or how == "altchksum" or how == "uto" then
			return tostring(rnd(0, 70000))
		end
		return ""
	elseif field == "src" or field == "dst" then
		return ("%d.%d.%d.%d"):format(rnd(0, 255), rnd(0, 255), rnd(0, 255), rnd(0, 255))
	elseif field == "flags" and proto == "TCP" then
		return ({ "S", "SA", "PA", "R", "F", "", "FSRPAUECN" })[rnd(1, 7)]
	end
	local pick = rnd(1, 4)
	return tostring(pick == 1 and rnd(0, 1) or pick == 2 and rnd(0, 7) or pick == 3 and rnd(0, 255) or rnd(0, 65535))
end

local function random_tamper()
	local proto = protos[rnd(1, #protos)]
	local list = fields[proto]
	local field = list[rnd(1, #list)]
	local kinds = { "replace", "corrupt", "add" }
	local kind = kinds[rnd(1, (field == "load" or field:find("^options") or field == "src" or field == "dst"
		or field == "flags") and 2 or 3)]
	if kind == "corrupt" then return ("tamper{%s:%s:corrupt}"):format(proto, field) end
	return ("tamper{%s:%s:%s:%s}"):format(proto, field, kind, random_value(proto, field))
end

local function random_node(depth, inbound)
	if depth <= 0 or rnd(1, 4) == 1 then return rnd(1, 6) == 1 and "drop" or "" end
	local pick = rnd(1, inbound and 2 or 5)
	if pick <= 2 then return random_tamper() .. "(" .. random_node(depth - 1, inbound) .. ",)" end
	if pick == 3 then
		return "duplicate(" .. random_node(depth - 1) .. "," .. random_node(depth - 1) .. ")"
	end
	if pick == 4 then
		local overlap = rnd(1, 3) == 1 and (":" .. ({ 1, 5, 100, 70000 })[rnd(1, 4)]) or ""
		return ("fragment{%s:%d:%s%s}(%s,%s)"):format(rnd(1, 2) == 1 and "tcp" or "ip", sizes[rnd(1, #sizes)],
			rnd(1, 2) == 1 and "True" or "False", overlap, random_node(depth - 1), random_node(depth - 1))
	end
	return "sleep{0}(" .. random_node(depth - 1) .. ",)"
end

function M.random_dna()
	local out, inn = {}, {}
	for i = 1, rnd(1, 2) do out[i] = triggers[rnd(1, #triggers)] .. "-" .. random_node(4, false) .. "-|" end
	if rnd(1, 2) == 1 then
		for i = 1, rnd(1, 2) do inn[i] = triggers[rnd(1, #triggers)] .. "-" .. random_node(3, true) .. "-|" end
	end
	return concat(out, " ") .. " \\/ " .. concat(inn, " ")
end

--------------------------------------------------------------------------
-- The run
--------------------------------------------------------------------------

-- What the strategy asked for that lets a packet leave with a bad checksum
-- or a lying length (Geneva's semantics).
local function asked(dna)
	return {
		ip_sum = dna:find("IP:chksum:", 1, true) or dna:find("IP:ihl:", 1, true),
		tcp_sum = dna:find("TCP:chksum:", 1, true) or dna:find("IP:len:", 1, true) or dna:find("IP:ihl:", 1, true)
			or dna:find("IP:load:", 1, true) or dna:find("IP:proto:", 1, true)
			-- after an IP fragment the transport header is bytes (scapy's Raw): not recomputed
			or dna:find("fragment{ip:", 1, true),
		ip_len = dna:find("IP:len:", 1, true),
	}
end

-- nil, or what is wrong with packet p that the strategy made from input.
local function check_output(p, input, a, inbound)
	if #p < 1 or #p > MAX_PACKET then return ("a packet of %d bytes"):format(#p) end
	local lin, l = layout(input), layout(p)
	if not lin then return p ~= input and "a packet that is not IPv4 was changed" or nil end
	if not inbound and (#p < 20 or u16(p, 2) ~= #p) then
		return ("sent with total length %d for %d bytes"):format(#p >= 4 and u16(p, 2) or -1, #p)
	end
	if inbound and lin.honest and not a.ip_len and u16(p, 2) ~= #p then
		return ("rewritten with total length %d for %d bytes (input %d bytes)"):format(u16(p, 2), #p, #input)
	end
	if not l then return nil end
	if not a.ip_sum and ip_sum_ok(input, lin.ihl) and l.ihl == lin.ihl and not ip_sum_ok(p, l.ihl) then
		return "a bad IP header checksum"
	end
	if not a.tcp_sum and lin.tcp and lin.honest and tcp_sum_ok(input, lin.ihl) and l.tcp and l.ihl == lin.ihl
		and (l.honest or not inbound) and not tcp_sum_ok(p, l.ihl) then
		return "a bad TCP checksum"
	end
	return nil
end

local BATCH = 24

-- Reads past a packet: the packet's last byte just before a page that may
-- not be touched (a read past it is a SIGSEGV), through a packet stand-in
-- with the methods apply uses.
ffi.cdef [[
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int mprotect(void *addr, size_t len, int prot);
]]
local PAGE, FENCED = 4096, 17 * 4096
local fenced = ffi.cast("uint8_t *", ffi.C.mmap(nil, FENCED + 4096, 3, 0x22, -1, 0))
assert(ffi.C.mprotect(fenced + FENCED, PAGE, 0) == 0, "mprotect")
local fence_end = fenced + FENCED
local stand_in = { accept = function() end, drop = function() end, set_payload = function() end }
function stand_in.view(self) return self.ptr, self.len end

function M.apply_fenced(s, p, direction)
	stand_in.ptr, stand_in.len = fence_end - #p, #p
	ffi.copy(stand_in.ptr, p, #p)
	return pcall(s.apply, s, stand_in, direction or "out")
end

--- A strategy parsed with guarded buffers, and the list of guards to check
-- (the module's and the strategy's), or nil and the parse error.
function M.parse(dna, opts)
	local s, err = with_guards(geneva.parse, dna, opts)
	local all = {}
	for i = 1, #guards do all[i] = guards[i] end
	for i = #guards, module_guards + 1, -1 do guards[i] = nil end
	if not s then return nil, err end
	return s, all
end
M.broken_guard = broken_guard

-- Run one strategy over a batch of inputs: a list of failures (strings).
local function run_batch(dna, inputs, direction, failures)
	local s, all = M.parse(dna, {
		send = function(ptr, len)
			local p = ffi.string(ptr, len)
			local why = check_output(p, M.current_input, M.current_asked, false)
			if why then M.current_failure = M.current_failure or why end
			return true
		end,
	})
	if not s then return nil end
	local a = asked(dna)
	local raised, seen = {}, {}
	local results = testing.run({
		on_packet = function(pkt)
			seen[pkt.id] = pkt:get_payload()
			M.current_input, M.current_asked, M.current_failure = seen[pkt.id], a, nil
			local ok, e = pcall(s.apply, s, pkt, direction)
			if not ok then raised[pkt.id] = tostring(e) end
			for k in pairs(s.held) do s.held[k] = nil end
			local broken = broken_guard(all)
			if broken then raised[pkt.id] = broken end
			if M.current_failure then raised[pkt.id] = raised[pkt.id] or M.current_failure end
		end,
	}, inputs, { send = true, hook = direction == "in" and "input" or "output" })
	-- again, each packet fenced
	for i, input in ipairs(inputs) do
		local ok, e = M.apply_fenced(s, seen[i] or input, direction)
		if not ok then raised[i] = raised[i] or tostring(e) end
		for k in pairs(s.held) do s.held[k] = nil end
		local broken = broken_guard(all)
		if broken then raised[i] = raised[i] or broken end
	end
	for i, input in ipairs(inputs) do
		local r = results.by_id[i]
		local why = raised[i]
		if not why and direction == "in" and r and r.payload then
			why = check_output(r.payload, seen[i], a, true)
		end
		if why then
			failures[#failures + 1] = { dna = dna, direction = direction, input = input, why = why }
			-- the canaries again, for the next input
			for _, g in ipairs(all) do
				ffi.fill(g.bytes + g.size, g.extra, CANARY)
				if g.slots then
					for k = 0, g.slots - 1 do ffi.fill(g.bytes + k * SLOT + MAX_PACKET, SLOT - MAX_PACKET, CANARY) end
				end
			end
		end
	end
	return true
end

local function unhex(h) return (h:gsub("%x%x", function(x) return char(tonumber(x, 16)) end)) end

--- opts: seed, iterations (batches) or seconds, root (the checkout). Returns
-- { strategies, packets, rejected, failures = { {dna, direction, input, why} } }.
function M.run(opts)
	math.randomseed(opts.seed or 1)
	rnd = math.random
	geneva.seed(opts.seed or 1)
	local fixtures = dofile((opts.root or ".") .. "/spec/fixtures/geneva/cases.lua")
	local bases, dnas, seen = {}, {}, {}
	for _, i in ipairs(fixtures.inputs) do bases[#bases + 1] = unhex(i.hex) end
	for _, c in ipairs(fixtures.cases) do
		if not seen[c.dna] then
			seen[c.dna] = true
			dnas[#dnas + 1] = c.dna
		end
	end
	local ipv6 = {
		testing.packet { src = "fd00::9", dst = "fd00::8", proto = "tcp", tcp_flags = 0x18, payload = "GET /" },
		testing.packet { src = "fd00::9", dst = "fd00::8", dport = 53, payload = "\0\1\1\0\0\1\0\0\0\0\0\0" },
	}
	local report = { strategies = 0, packets = 0, rejected = 0, failures = {} }
	local deadline = opts.seconds and os.time() + opts.seconds
	local n = 0
	while true do
		n = n + 1
		if opts.iterations and n > opts.iterations then break end
		if deadline and os.time() >= deadline then break end
		local dna = (n <= #dnas and not opts.random_only) and dnas[n] or M.random_dna()
		local inputs = {}
		for i = 1, BATCH do inputs[i] = M.mutate(bases[rnd(1, #bases)], ipv6) end
		for _, direction in ipairs { "out", "in" } do
			local ok = run_batch(dna, inputs, direction, report.failures)
			if ok then
				report.strategies = report.strategies + 1
				report.packets = report.packets + #inputs
			else
				report.rejected = report.rejected + 1
			end
		end
		if #report.failures > 20 then break end
	end
	return report
end

local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(byte(c)) end)) end
M.hex = hex

if arg and arg[0] and arg[0]:find("fuzz_geneva%.lua$") then -- run as a script
	local seconds, seed = tonumber(arg[1]) or 60, tonumber(arg[2]) or os.time()
	print(("fuzz_geneva: seed %d, %d seconds (a crash: a read past a packet; run again with this seed)")
		:format(seed, seconds))
	io.stdout:flush()
	local report = M.run { seconds = seconds, seed = seed, root = os.getenv("NFQ_ROOT") or "." }
	print(("fuzz_geneva: seed %d, %d strategy runs, %d packets, %d random strategies refused by parse, %d failures")
		:format(seed, report.strategies, report.packets, report.rejected, #report.failures))
	for i, f in ipairs(report.failures) do
		if i > 5 then break end
		print(("  %s (%s) on %d bytes %s: %s"):format(f.dna, f.direction, #f.input, hex(f.input):sub(1, 200), f.why))
	end
	os.exit(#report.failures == 0 and 0 or 1)
end

return M

--- nfq.sets: domain-name and address sets (nfq.domainset, nfq.ipset).
-- The sets live in C memory (src/nfq_domainset.c, src/nfq_ipset.c), built
-- once from a Lua list or a file, then queried with pointers: a match is one
-- FFI call that allocates nothing, so a filter can ask per packet. The
-- memory is outside the Lua heap (and outside --lua-mem-limit), freed by the
-- set's finalizer when the last reference to it goes.
local ffi = require "ffi"

-- ffi.metatype can be set once per Lua state: a second load of this module
-- (package.loaded cleared) hands back the first copy, as nfq.lua does.
local registry = debug.getregistry()
if registry["nfq.sets"] then
	return registry["nfq.sets"]
end

local nfq = require "nfq"
local C = nfq._C

local type, error, tostring, pairs = type, error, tostring, pairs
local floor = math.floor
local ffi_string, ffi_gc, ffi_errno, ffi_sizeof = ffi.string, ffi.gc, ffi.errno, ffi.sizeof
local shown = nfq._shown

local _M = { _VERSION = nfq._VERSION }

local EXACT, ENTRY_HEAD = C.NFQ_DOMAIN_EXACT, C.NFQ_DOMAIN_ENTRY_HEAD
local SLOT_BYTES = ffi_sizeof("struct nfq_set_slot")
local IP_ENTRY_BYTES = ffi_sizeof("struct nfq_ipset_entry")
local address_buf = ffi.new("uint8_t[16]")
local FORMAT_LEN = 64
local format_buf = ffi.new("char[?]", FORMAT_LEN)

local function check_length(len, what)
	if type(len) ~= "number" or len < 0 or len ~= floor(len) then
		error(("nfq: %s: the length must be a whole number of bytes, got %s"):format(what, shown(len)), 3)
	end
end

local function check_index(set, i, what)
	if type(i) ~= "number" or i ~= floor(i) or i < 1 or i > set.nentries then
		error(("nfq: %s: the index must be an integer from 1 to %d (the set's size), got %s"):format(what,
			set.nentries, shown(i)), 3)
	end
end

local function report_table(set, bytes)
	local r = set.report
	return {
		entries = set.nentries, lines = r.lines, added = r.added, duplicates = r.duplicates,
		skipped = r.skipped, bad = r.bad, bytes = bytes,
	}
end

--------------------------------------------------------------------------
-- Domain sets
--------------------------------------------------------------------------

local DomainSet = {}

--- The entry that covers a name (the longest such, or the exact entry),
-- or nil: name is a Lua string, or a pointer with its length in bytes.
function DomainSet:match(name, len)
	if type(name) == "string" then
		len = #name
	elseif type(name) ~= "cdata" then
		error("nfq: domainset:match expects a string, or a pointer and a length, got " .. shown(name), 2)
	else
		check_length(len, "domainset:match")
	end
	local i = C.nfq_domainset_match(self, name, len)
	if i ~= 0 then return i end
	return nil
end

--- Entry i as it was listed: the name lowercased without a trailing dot,
-- with "=" before an exact-only entry.
function DomainSet:entry(i)
	check_index(self, i, "domainset:entry")
	local e = self.arena + self.offsets[i - 1]
	local name = ffi_string(e + ENTRY_HEAD, e[0])
	if e[1] == EXACT then return "=" .. name end
	return name
end

function DomainSet:count() return self.nentries end

--- What loading found (lines, added, duplicates, skipped, bad) and the
-- set's size: entries, and the bytes of C memory it holds.
function DomainSet:stats()
	return report_table(self, (self.mask + 1) * SLOT_BYTES + self.offsets_cap * 4 + self.arena_cap)
end

ffi.metatype("struct nfq_domainset", {
	__index = DomainSet,
	__len = function(set) return set.nentries end,
	__tostring = function(set) return ("domainset: %d entries"):format(set.nentries) end,
})

--------------------------------------------------------------------------
-- Address sets
--------------------------------------------------------------------------

local IpSet = {}

--- The longest prefix holding an address, or nil: the address is a 4- or
-- 16-byte cdata array (ip.src, ip6.dst), a pointer with its length (4 or
-- 16), or a string such as "192.0.2.1" (not for every packet: it is parsed).
function IpSet:match(addr, len)
	if type(addr) == "string" then
		len = C.nfq_ipset_parse_address(addr, #addr, address_buf)
		if len == 0 then
			error(("nfq: ipset:match: %s is not an IPv4 or IPv6 address"):format(shown(addr)), 2)
		end
		addr = address_buf
	elseif type(addr) ~= "cdata" then
		error("nfq: ipset:match expects an address (4 or 16 bytes, or a string), got " .. shown(addr), 2)
	elseif len == nil then
		len = ffi_sizeof(addr)
	end
	if len ~= 4 and len ~= 16 then
		error(("nfq: ipset:match: an address is 4 or 16 bytes, got %s; give a pointer's length as the second "
			.. "argument"):format(shown(len)), 2)
	end
	local i = C.nfq_ipset_match(self, addr, len)
	if i ~= 0 then return i end
	return nil
end

local function match_packet(set, pkt, dst, what)
	if type(pkt) ~= "cdata" and type(pkt) ~= "table" then
		error(("nfq: %s expects a packet or a packet buffer, got %s"):format(what, shown(pkt)), 2)
	end
	local data, len = pkt:view()
	local i = C.nfq_ipset_match_packet(set, data, len, dst)
	if i ~= 0 then return i end
	return nil
end

--- The longest prefix holding the source (destination) address of a packet
-- or packet buffer, or nil (also for bytes that are not IPv4 or IPv6).
function IpSet:match_src(pkt) return match_packet(self, pkt, 0, "ipset:match_src") end
function IpSet:match_dst(pkt) return match_packet(self, pkt, 1, "ipset:match_dst") end

--- Entry i as text: "10.0.0.0/8", or "192.0.2.1" for a whole address.
function IpSet:entry(i)
	check_index(self, i, "ipset:entry")
	local n = C.nfq_ipset_format(self, i, format_buf, FORMAT_LEN)
	return ffi_string(format_buf, n)
end

function IpSet:count() return self.nentries end

function IpSet:stats()
	return report_table(self, (self.mask + 1) * SLOT_BYTES + self.entries_cap * IP_ENTRY_BYTES)
end

ffi.metatype("struct nfq_ipset", {
	__index = IpSet,
	__len = function(set) return set.nentries end,
	__tostring = function(set) return ("ipset: %d entries"):format(set.nentries) end,
})

--------------------------------------------------------------------------
-- Loading
--------------------------------------------------------------------------

local kinds = {
	domainset = {
		new = C.nfq_domainset_new, free = C.nfq_domainset_free, add_file = C.nfq_domainset_add_file,
		add_item = C.nfq_domainset_add_item, trim = C.nfq_domainset_trim, what = "names",
	},
	ipset = {
		new = C.nfq_ipset_new, free = C.nfq_ipset_free, add_file = C.nfq_ipset_add_file,
		add_item = C.nfq_ipset_add_item, trim = C.nfq_ipset_trim, what = "addresses or prefixes",
	},
}

local function warn_stderr(message)
	io.stderr:write(message, "\n")
end

local function strerror(e)
	return ffi_string(ffi.C.nfq_strerror(e))
end

--- "nfq.domainset: list.txt: 3 of 1200 lines are not names, ignored: line 5 "x y", ..."
-- (a list's items are "items").
local function bad_lines_message(name, set, where, line, what)
	local r = set.report
	local samples = {}
	for k = 0, math.min(r.bad, C.NFQ_SET_SAMPLES) - 1 do
		samples[#samples + 1] = ("%s %d %q"):format(line, r.bad_line[k], ffi_string(r.bad_text[k]))
	end
	return ("nfq.%s: %s: %d of %d %ss are not %s, ignored: %s%s"):format(name, where, r.bad, r.lines, line, what,
		table.concat(samples, ", "), r.bad > #samples and ", ..." or "")
end

-- Called in tail position from nfq.domainset and nfq.ipset: error level 2 is their caller.
local function build(name, source, opts)
	local kind = kinds[name]
	local warn = warn_stderr
	if opts ~= nil then
		if type(opts) ~= "table" then
			error(("nfq.%s: options must be a table, got %s"):format(name, shown(opts)), 2)
		end
		for k, v in pairs(opts) do
			if k ~= "warn" then
				error(("nfq.%s: unknown option '%s'; the option is warn"):format(name, tostring(k)), 2)
			end
			if type(v) ~= "function" then
				error(("nfq.%s: warn must be a function, got %s"):format(name, shown(v)), 2)
			end
			warn = v
		end
	end
	local where, line = source, "line"
	if type(source) == "table" then
		where, line = "the list", "item"
		for i = 1, #source do
			if type(source[i]) ~= "string" then
				error(("nfq.%s: the list's items must be strings, item %d is %s"):format(name, i,
					shown(source[i])), 2)
			end
		end
	elseif type(source) ~= "string" then
		error(("nfq.%s expects a file name or a list of strings, got %s"):format(name, shown(source)), 2)
	end
	-- The set is C memory owned by this cdata: the finalizer frees it when
	-- the script drops its last reference (at the latest, with the Lua
	-- state). Matching reads it in place; nothing else keeps a pointer.
	local set = kind.new()
	if set == nil then
		return nil, ("nfq.%s: out of memory"):format(name)
	end
	set = ffi_gc(set, kind.free)
	local failed
	if type(source) == "string" then
		if kind.add_file(set, source) ~= 0 then
			failed = ("cannot read %s: %s"):format(source, strerror(ffi_errno()))
		end
	else
		for i = 1, #source do
			local item = source[i]
			if kind.add_item(set, item, #item) ~= 0 then
				failed = "out of memory"
				break
			end
		end
	end
	if failed then
		kind.free(ffi_gc(set, nil))
		return nil, ("nfq.%s: %s"):format(name, failed)
	end
	kind.trim(set)
	if set.report.bad > 0 then
		warn(bad_lines_message(name, set, where, line, kind.what))
	end
	return set
end

--- A domain set from a file (one name a line, hosts files, ||name^ lines,
-- dnsmasq address=/name/ lines, # comments) or a list of strings: the set,
-- or nil and why.
function _M.domainset(source, opts)
	return build("domainset", source, opts)
end

--- An address set from a file or a list of addresses and prefixes.
function _M.ipset(source, opts)
	return build("ipset", source, opts)
end

registry["nfq.sets"] = _M
return _M

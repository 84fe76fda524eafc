--- nfq.pcap: record packets to pcap files from the per-packet path without
-- blocking it. A recorder copies each packet into a memory buffer; a thread
-- of its own writes full buffers to disk, rotates files, and flushes what is
-- buffered every flush_interval seconds (src/nfq_pcap.c has the design).
local ffi = require "ffi"
local nfq = require "nfq"

local C = nfq._C
local ffi_gc, ffi_istype, ffi_string = ffi.gc, ffi.istype, ffi.string
local type, error, setmetatable, tostring, tonumber, pairs = type, error, setmetatable, tostring, tonumber, pairs
local floor = math.floor
local shown, c_packet = nfq._shown, nfq._c_packet

local _M = { _VERSION = nfq._VERSION }

local packet_ref_t = ffi.typeof("struct nfq_lua_packet_ref *")
local lua_packet_t = ffi.typeof("struct nfq_lua_packet")
local buffer_t = ffi.typeof("struct nfq_lua_buffer *")

local MIB = 1024 * 1024
-- How long close() waits for the writer thread to write what is buffered.
local CLOSE_WAIT_MS = 10000
local MAX_LEN = 0xffffffff

local ERR_LEN = 512
local errbuf = ffi.new("char[?]", ERR_LEN)
local copts = ffi.new("struct nfq_pcap_opts")
local cstats = ffi.new("struct nfq_pcap_stats")

local function check_int(v, lo, hi, what, level)
	if type(v) ~= "number" or v ~= v or v ~= floor(v) or v < lo or v > hi then
		error(("nfq.pcap: %s must be an integer from %d to %d, got %s"):format(what, lo, hi, shown(v)), level + 1)
	end
	return v
end

local Recorder = {}
Recorder.__index = Recorder

local function handle_of(w, level)
	local h = w.h
	if h == nil then
		error(("nfq.pcap: the recorder of '%s' is closed; open it again with nfq.pcap()"):format(w.path), level + 1)
	end
	return h
end

--- Record a packet: a queued packet (its payload as it stands now, stamped
-- with its kernel time stamp, or the current time when it has none), a
-- packet buffer, a string, or a pointer and a length (stamped now). True,
-- or false when it was dropped because both buffers were full.
function Recorder:write(data, len)
	local h = self.h
	if h == nil then handle_of(self, 2) end
	local r
	if ffi_istype(packet_ref_t, data) or ffi_istype(lua_packet_t, data) then
		r = C.nfq_pcap_write_packet(h, c_packet(data, 2))
		if r < 0 then
			error("nfq.pcap: this packet has no payload to record: the queue copies metadata only "
				.. "(bind with mode = nfq.COPY_PACKET, or run nfqlua with --mode packet)", 2)
		end
	elseif type(data) == "string" then
		r = C.nfq_pcap_write(h, data, #data, #data, -1, 0)
	elseif len ~= nil then
		if type(data) ~= "cdata" then
			error("nfq.pcap: a length goes with a pointer (cdata), but the first argument is " .. shown(data), 2)
		end
		check_int(len, 0, MAX_LEN, "the length", 2)
		r = C.nfq_pcap_write(h, data, len, len, -1, 0)
	elseif ffi_istype(buffer_t, data) then
		local ptr, n = data:view()
		r = C.nfq_pcap_write(h, ptr, n, n, -1, 0)
	else
		error("nfq.pcap: write expects a packet, a packet buffer, a string, or a pointer and a length, got "
			.. shown(data), 2)
	end
	return r == 1
end

--- Have the writer thread write what is buffered now; returns at once.
function Recorder:flush()
	C.nfq_pcap_flush(handle_of(self, 2))
end

--- The recorder's counters: written, dropped, bytes, rotated, write_errors,
-- buffered, and last_error (why the last write failed, nil once writing
-- works again). After close(), they are as close() left them.
function Recorder:stats()
	local h = self.h
	if h == nil then
		local final = self.final_stats
		local t = {}
		for k, v in pairs(final) do t[k] = v end
		return t
	end
	C.nfq_pcap_get_stats(h, cstats)
	return {
		written = tonumber(cstats.written),
		dropped = tonumber(cstats.dropped),
		bytes = tonumber(cstats.bytes),
		rotated = tonumber(cstats.rotated),
		write_errors = tonumber(cstats.write_errors),
		buffered = tonumber(cstats.buffered),
		last_error = cstats.last_errno ~= 0 and ffi_string(C.nfq_strerror(cstats.last_errno)) or nil,
	}
end

--- Write what is buffered, waiting for the disk (up to 10 s), and give up
-- this recorder: true, or nil and why when the writes did not finish in
-- time (the thread goes on with them). The file closes with the last
-- recorder open on its path. Not for the packet path: it waits.
function Recorder:close()
	local h = self.h
	if h == nil then return true end
	local done = C.nfq_pcap_sync(h, CLOSE_WAIT_MS) == 0
	self.final_stats = self:stats()
	self.h = nil
	ffi_gc(h, nil)
	C.nfq_pcap_release(h)
	if not done then
		return nil, ("nfq.pcap: '%s': the disk took more than %d s; the rest is written in the background")
			:format(self.path, CLOSE_WAIT_MS / 1000)
	end
	return true
end

Recorder.__tostring = function(w)
	return ("nfq.pcap recorder of '%s'%s"):format(w.path, w.h == nil and " (closed)" or "")
end

local open_opts = { max_bytes = true, keep = true, snaplen = true, buffer_bytes = true, flush_interval = true }

--- Open a recorder on path: a new pcap file (an existing one that holds
-- packets is first rotated to path.1 when keep > 0), or the recorder this process already
-- has on that path, shared. nil and why when the file cannot be created.
function _M.open(path, opts)
	if type(path) ~= "string" or path == "" then
		error("nfq.pcap: the path must be a file name (a string), got " .. shown(path), 2)
	end
	if opts == nil then
		opts = {}
	elseif type(opts) ~= "table" then
		error("nfq.pcap: options must be a table, got " .. shown(opts), 2)
	end
	for k in pairs(opts) do
		if not open_opts[k] then
			error(("nfq.pcap: unknown option '%s'; the options are buffer_bytes, flush_interval, keep, max_bytes, snaplen")
				:format(tostring(k)), 2)
		end
	end
	copts.max_bytes = check_int(opts.max_bytes or 0, 0, 2 ^ 53, "max_bytes", 2)
	copts.keep = check_int(opts.keep or 9, 0, 1000, "keep", 2)
	copts.snaplen = check_int(opts.snaplen or C.NFQ_PCAP_MAX_SNAPLEN, 1, C.NFQ_PCAP_MAX_SNAPLEN, "snaplen", 2)
	copts.buffer_bytes = check_int(opts.buffer_bytes or MIB, C.NFQ_PCAP_MIN_BUFFER, 1024 * MIB, "buffer_bytes", 2)
	local interval = opts.flush_interval or 1
	if type(interval) ~= "number" or not (interval >= 0.001 and interval <= 3600) then
		error("nfq.pcap: flush_interval must be a number of seconds from 0.001 to 3600, got " .. shown(interval), 2)
	end
	copts.flush_ms = floor(interval * 1000 + 0.5)
	local h = C.nfq_pcap_open(path, copts, errbuf, ERR_LEN)
	if h == nil then
		return nil, "nfq.pcap: " .. ffi_string(errbuf)
	end
	return setmetatable({ h = ffi_gc(h, C.nfq_pcap_release), path = path }, Recorder)
end

return _M

--- nfq.offline: run a filter script without a kernel. The one loop behind
-- nfqlua --replay and nfq.testing: packets go into an offline queue, through
-- the same dispatch and verdict code as on a real queue (the verdicts are
-- recorded instead of sent), and the script runs on the packets' clock:
--
-- * Packets with the same time reach the script as one batch, and nfq.now()
--   is their time; a packet older than the one before leaves the clock where
--   it is.
-- * on_timer runs every timer_interval of that clock from the first packet
--   on, between the packets where a daemon would have run it, but for at most
--   NFQ_OFFLINE_DRAIN_SECONDS of any one gap: a longer gap gets one more call
--   at its end, and the front end is told how many were skipped.
-- * A repeated packet goes through the script again with its new mark and
--   payload, up to NFQ_OFFLINE_MAX_REPEATS times; then it counts as a drop,
--   as the kernel would loop.
-- * After the last packet, on_timer goes on while the script holds packets,
--   for at most NFQ_OFFLINE_DRAIN_SECONDS; then on_stop runs and what is still
--   held gets the fallback verdict, as at a daemon's stop.
-- * Packets the script sends (nfq.send, pkt:reject) are reported where they
--   were sent, between the final verdicts, in the order of the calls.
--
-- A front end (nfq.testing, or replay() below for --replay) gives the packets
-- and takes the final verdicts.
local ffi = require "ffi"
local bit = require "bit"
local nfq = require "nfq"

local C = nfq._C
local band, rshift = bit.band, bit.rshift
local floor = math.floor
local type, tonumber, ipairs = type, tonumber, ipairs
local ffi_string = ffi.string

local _M = { _VERSION = nfq._VERSION }

local VERDICT_MASK, QUEUE_SHIFT, QUEUE_BYPASS = C.NFQ_VERDICT_MASK, C.NFQ_QUEUE_SHIFT, C.NFQ_QUEUE_BYPASS
local NF_DROP, NF_ACCEPT, NF_QUEUE, NF_REPEAT, NF_STOP = C.NFQ_DROP, C.NFQ_ACCEPT, C.NFQ_QUEUE, C.NFQ_REPEAT, C.NFQ_STOP
local PF_MARK_SET, PF_CONNMARK_SET, PF_FALLBACK = C.NFQ_PF_MARK_SET, C.NFQ_PF_CONNMARK_SET, C.NFQ_PF_FALLBACK
local RECORD_SENT = C.NFQ_RECORD_SENT
local MAX_REPEATS = C.NFQ_OFFLINE_MAX_REPEATS
local DRAIN_SECONDS = C.NFQ_OFFLINE_DRAIN_SECONDS
-- The most of one gap between packets that on_timer catches up on: a
-- capture whose clock jumps by years must not run it billions of times.
local CATCH_UP_SECONDS = DRAIN_SECONDS

local verdict_names = {
	[NF_DROP] = "drop", [NF_ACCEPT] = "accept", [C.NFQ_STOLEN] = "stolen",
	[NF_QUEUE] = "queue", [NF_REPEAT] = "repeat", [NF_STOP] = "stop",
}

local queue_ptr_t = ffi.typeof("struct nfq_queue *")
local count_box = ffi.new("uint32_t[1]")

--- Run a script over packets. q: an offline queue (a struct nfq_queue *, or
-- its address); hooks: the script's table (on_packet, on_timer,
-- timer_interval, on_stop; on_start is the caller's). source() returns the
-- next packet as bytes, time (nil: the packet before's) and meta (a struct
-- nfq_packet with its id, which the driver keeps), or nothing at the end.
-- front:
--   call(fn, ...)        calls into the script, returning as pcall does
--   verdict(r, meta)     a final verdict: r = { id, verdict, queue_num,
--                        bypass, mark, connmark, payload, fallback, repeats,
--                        repeat_loop, time, packet }
--   sent(s)              a packet the script sent: s = { sent = true, packet,
--                        mark, time }
--   failed(what, err)    a call into the script failed ("script error",
--                        "on_stop failed"); may raise
--   note(text)           something the run did that the user should know
-- Returns the number of on_timer calls skipped over long gaps.
function _M.run(q, hooks, source, front)
	q = ffi.cast(queue_ptr_t, q)
	local queue = nfq._adopt(q, hooks.on_packet)
	nfq._set_send_queue(queue)
	local dispatch = queue._dispatch
	local call, failed = front.call, front.failed
	local on_timer = hooks.on_timer
	local interval = on_timer and (hooks.timer_interval or 1) or 0
	local pending, n_pending = {}, 0
	local clock, next_tick = 0, 0
	local stopped = false
	local timer_skipped = 0

	local function set_clock(t)
		clock = t
		nfq._set_now(t)
	end

	local function run_batch()
		while q.pos < q.count do
			local ok, err = call(dispatch, queue)
			if not ok then
				C.nfq_queue_finish_current(q)
				failed("script error", err)
			end
		end
		C.nfq_queue_flush(q)
	end

	local function push(p)
		if C.nfq_queue_offline_push(q, p.meta, p.bytes, #p.bytes) ~= 0 then
			run_batch()
			if C.nfq_queue_offline_push(q, p.meta, p.bytes, #p.bytes) ~= 0 then
				error("nfq.offline: the offline queue refused a packet after its batch was dispatched", 0)
			end
		end
	end

	-- Act on what was recorded since the last call: a repeated packet goes
	-- back into the queue, the other verdicts are final, sent packets are
	-- reported between them. True if any packet went back.
	local function take()
		local recs = C.nfq_queue_records(q, count_box)
		local again
		for i = 0, count_box[0] - 1 do
			local r = recs[i]
			local p = r.kind ~= RECORD_SENT and pending[r.id]
			if r.kind == RECORD_SENT then
				front.sent({ sent = true, packet = ffi_string(r.payload, r.payload_len), mark = tonumber(r.mark),
					time = clock })
			elseif p then
				local v = band(r.verdict, VERDICT_MASK)
				local payload = r.payload ~= nil and ffi_string(r.payload, r.payload_len) or nil
				local mark = band(r.flags, PF_MARK_SET) ~= 0 and tonumber(r.mark) or nil
				if v == NF_REPEAT and p.repeats < MAX_REPEATS and not stopped then
					p.repeats = p.repeats + 1
					if mark then p.meta.mark = mark end
					p.bytes = payload or p.bytes
					again = again or {}
					again[#again + 1] = p
				else
					pending[r.id] = nil
					n_pending = n_pending - 1
					-- A repeat past the limit, or after the stop, goes nowhere.
					front.verdict({
						id = p.id,
						verdict = v == NF_REPEAT and "drop" or verdict_names[v],
						queue_num = v == NF_QUEUE and rshift(r.verdict, QUEUE_SHIFT) or nil,
						bypass = v == NF_QUEUE and band(r.verdict, QUEUE_BYPASS) ~= 0 or nil,
						mark = mark,
						connmark = band(r.flags, PF_CONNMARK_SET) ~= 0 and tonumber(r.connmark) or nil,
						payload = payload,
						fallback = band(r.flags, PF_FALLBACK) ~= 0,
						repeats = p.repeats > 0 and p.repeats or nil,
						repeat_loop = v == NF_REPEAT and not stopped or nil,
						time = clock,
						packet = p.bytes,
					}, p.meta)
				end
			end
		end
		C.nfq_queue_clear_records(q)
		if not again then return false end
		for _, p in ipairs(again) do push(p) end
		return true
	end

	local function settle()
		repeat run_batch() until not take()
	end

	-- on_timer, as the daemon runs it: its verdicts flushed together.
	local function tick()
		set_clock(next_tick)
		next_tick = next_tick + interval
		q.in_dispatch = 1
		local ok, err = call(on_timer)
		C.nfq_queue_flush(q)
		if not ok then failed("script error", err) end
		if take() then settle() end
	end

	-- The ticks due before packet id at time t, for at most CATCH_UP_SECONDS
	-- of the gap; a longer gap gets one more at its end.
	local function advance(t, id)
		if interval == 0 then return end
		local gap_start = clock
		while next_tick <= t and next_tick <= gap_start + CATCH_UP_SECONDS do tick() end
		if next_tick > t then return end
		local skipped = floor((t - next_tick) / interval)
		if skipped > 0 then
			timer_skipped = timer_skipped + skipped
			front.note(("on_timer: the packets' clock jumps %.3f s before packet %d; on_timer ran for the first %d s "
				.. "of the gap and once at its end, %d calls skipped"):format(t - gap_start, id, CATCH_UP_SECONDS, skipped))
			next_tick = t
		end
		tick()
	end

	local started = false
	while true do
		local bytes, t, meta = source()
		if not bytes then break end
		local id = tonumber(meta.id)
		if not started then
			started = true
			set_clock(t or 0)
			next_tick = clock + interval
		elseif t and t > clock then
			settle()
			advance(t, id)
			set_clock(t)
		end
		local p = { id = id, meta = meta, bytes = bytes, repeats = 0 }
		pending[id] = p
		n_pending = n_pending + 1
		push(p)
	end
	settle()
	local drain_end = clock + DRAIN_SECONDS
	while n_pending > 0 and interval > 0 and next_tick <= drain_end do tick() end
	if hooks.on_stop then
		local ok, err = call(hooks.on_stop)
		if not ok then failed("on_stop failed", err) end
	end
	stopped = true
	C.nfq_queue_unbind(q)
	take()
	nfq._set_send_queue(nil)
	return timer_skipped
end

--------------------------------------------------------------------------
-- nfqlua --replay: the capture is read, and the accepted packets written,
-- by src/nfq_replay.c, which is linked into the nfqlua binary only.
--------------------------------------------------------------------------

if not pcall(ffi.typeof, "struct nfq_replay") then
	ffi.cdef [[
	struct nfq_replay;
	int nfq_replay_next(struct nfq_replay *r, struct nfq_packet *meta, const uint8_t **data, uint32_t *len);
	const char *nfq_replay_error(const struct nfq_replay *r);
	void nfq_replay_write(struct nfq_replay *r, const uint8_t *data, uint32_t len, int64_t sec, int64_t usec);
	void nfq_replay_script_error(struct nfq_replay *r, const char *what, const char *msg);
	void nfq_replay_note(struct nfq_replay *r, const char *msg);
	void nfq_replay_summary(struct nfq_replay *r, uint64_t accept, uint64_t drop, uint64_t queue,
				uint64_t stop, uint64_t fallback, uint64_t repeat_loops, uint64_t sent);
	]]
end

local describe_buf = ffi.new("char[64]")

-- A script's error as text, whatever it raised.
local function error_text(err)
	if type(err) == "string" then return err end
	return ("(error object is a %s value)"):format(type(err))
end

-- One line per final verdict, as README.md shows them.
local function write_verdict(out, r, meta)
	local sec, usec = tonumber(meta.ts_sec), tonumber(meta.ts_usec)
	C.nfq_describe(r.packet, #r.packet, describe_buf, 64)
	out:write("#", r.id, " ", ("%d.%06d"):format(sec, usec), " ", ffi_string(describe_buf), " -> ", r.verdict or "?")
	if r.queue_num then out:write(" ", r.queue_num, r.bypass and " bypass" or "") end
	if r.mark then out:write((" mark=0x%x"):format(r.mark)) end
	if r.connmark then out:write((" connmark=0x%x"):format(r.connmark)) end
	if r.payload then out:write(" rewritten to ", #r.payload, " bytes") end
	if r.fallback then out:write(" (fallback)") end
	if r.repeats then out:write(" (after ", r.repeats, " repeats)") end
	local held = r.time - (sec + usec / 1e6)
	if held >= 0.0005 then out:write((" (held %.3f s)"):format(held)) end
	out:write("\n")
end

--- The --replay front end: reader is the C capture reader (a struct
-- nfq_replay *), call the engine's guarded call into the script.
function _M.replay(q, hooks, reader, call)
	local R = ffi.C
	reader = ffi.cast("struct nfq_replay *", reader)
	local data, len = ffi.new("const uint8_t *[1]"), ffi.new("uint32_t[1]")
	local counts = { accept = 0, drop = 0, queue = 0, stop = 0, fallback = 0, repeat_loops = 0, sent = 0 }
	local out = io.stdout

	local function source()
		local meta = ffi.new("struct nfq_packet")
		local got = R.nfq_replay_next(reader, meta, data, len)
		if got < 0 then error(ffi_string(R.nfq_replay_error(reader)), 0) end
		if got == 0 then return nil end
		return ffi_string(data[0], len[0]), tonumber(meta.ts_sec) + tonumber(meta.ts_usec) / 1e6, meta
	end

	local function verdict(r, meta)
		if r.repeat_loop then
			counts.repeat_loops = counts.repeat_loops + 1
			out:write(("#%d repeated %d times: counted as a drop, as the kernel would loop\n"):format(r.id, r.repeats))
		end
		write_verdict(out, r, meta)
		if counts[r.verdict] then counts[r.verdict] = counts[r.verdict] + 1 end
		if r.fallback then counts.fallback = counts.fallback + 1 end
		if r.verdict == "accept" or r.verdict == "stop" then
			local kept = r.payload or r.packet
			R.nfq_replay_write(reader, kept, #kept, meta.ts_sec, meta.ts_usec)
		end
	end

	-- A sent packet: a line, and its place in --out among the accepted ones.
	local function sent(s)
		counts.sent = counts.sent + 1
		C.nfq_describe(s.packet, #s.packet, describe_buf, 64)
		out:write("sent ", ("%.6f"):format(s.time), " ", ffi_string(describe_buf))
		if s.mark ~= 0 then out:write((" mark=0x%x"):format(s.mark)) end
		out:write("\n")
		local sec = floor(s.time)
		R.nfq_replay_write(reader, s.packet, #s.packet, sec, floor((s.time - sec) * 1e6 + 0.5))
	end

	_M.run(q, hooks, source, {
		call = call,
		verdict = verdict,
		sent = sent,
		failed = function(what, err) R.nfq_replay_script_error(reader, what, error_text(err)) end,
		note = function(text) R.nfq_replay_note(reader, text) end,
	})
	R.nfq_replay_summary(reader, counts.accept, counts.drop, counts.queue, counts.stop, counts.fallback,
		counts.repeat_loops, counts.sent)
end

return _M

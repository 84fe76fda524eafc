-- nfq.send's side of bench/send.sh: every on_timer call sends BENCH_SEND_BURST
-- copies of one IPv4/UDP packet (BENCH_SEND_SIZE bytes of payload, the packet
-- bench/raw_sender sends) to 198.18.0.2, which send.sh routes out of a veth
-- device whose peer drops it. Sends inside on_timer leave in batches, a sendmmsg() per 64, as
-- the C reference sends them. BENCH_SEND_MARK gives every packet its own
-- mark (opts.mark: an SO_MARK control message per packet).
--   ./nfqlua bench/send_filter.lua --queue 0 --send
local ffi = require "ffi"
local nfq = require "nfq"

local BURST = tonumber(os.getenv("BENCH_SEND_BURST") or "4096")
local SIZE = tonumber(os.getenv("BENCH_SEND_SIZE") or "64")
local MARK = tonumber(os.getenv("BENCH_SEND_MARK") or "")

local function u16(n) return string.char(math.floor(n / 256), n % 256) end
local len = 28 + SIZE
local bytes = "\69\0" .. u16(len) .. "\0\1\0\0\64\17\0\0" .. "\198\18\0\1" .. "\198\18\0\2"
	.. u16(9) .. u16(9) .. u16(len - 20) .. "\0\0" .. ("x"):rep(SIZE)
local buf = ffi.new("uint8_t[?]", len)
ffi.copy(buf, bytes, len)
nfq._C.nfq_fix_checksums(buf, len)
local packet = ffi.string(buf, len)
local opts = MARK and { mark = MARK } or nil
local send = nfq.send

return {
	on_packet = function(pkt) pkt:accept() end,
	on_timer = function()
		for _ = 1, BURST do send(packet, opts) end
	end,
	timer_interval = 0.001,
}

-- Delay every packet by NFQ_DELAY_MS milliseconds (default 200) and keep
-- their order: a small network-delay emulator. on_timer releases what is
-- due, so a packet leaves on time even when no other packet follows it.
--   NFQ_DELAY_MS=50 nfqlua scripts/examples/delay.lua --queue 1
local nfq = require "nfq"

local now = nfq.now
local delay = (tonumber(os.getenv("NFQ_DELAY_MS")) or 200) / 1000

-- Held packets in arrival order, and the time each may leave.
local held, due = {}, {}
local first, last = 1, 0

return {
	timer_interval = 0.005,
	on_packet = function(pkt)
		last = last + 1
		held[last], due[last] = pkt:retain(), now() + delay
	end,
	on_timer = function()
		local t = now()
		while first <= last and due[first] <= t do
			held[first]:accept()
			held[first], due[first] = nil, nil
			first = first + 1
		end
	end,
}

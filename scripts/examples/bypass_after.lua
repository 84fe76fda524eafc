-- Look at the first packets of each flow, then bypass it: the packet gets the
-- bypass mark, which the CONNMARK rules of README, Bypass, save on the
-- connection, so the rest of the flow skips the queue.
-- NFQ_BYPASS_AFTER=10 nfqlua scripts/examples/bypass_after.lua --queue 1
--
-- The flows are those of a flow table (README, Flows): both directions of a
-- connection count, a get allocates nothing, and idle flows end by
-- themselves. The table is named, so a reload keeps the counts.
local nfq = require "nfq"

local after = tonumber(os.getenv("NFQ_BYPASS_AFTER") or "10")
local flows = nfq.flows { name = "bypass_after", max = 65536 }

local function on_packet(pkt)
	local flow = flows:get(pkt)
	if flow and flow.packets >= after then
		flow:bypass(pkt)
	else
		pkt:accept()
	end
end

return {
	on_packet = on_packet,
	timer_interval = 1,
	on_timer = function() flows:expire() end,
}

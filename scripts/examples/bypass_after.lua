-- Look at the first packets of each TCP and UDP flow, then bypass it: the
-- packet gets the bypass mark, which the CONNMARK rules of README, Bypass,
-- save on the connection, so the rest of the flow skips the queue.
-- NFQ_BYPASS_AFTER=10 nfqlua scripts/examples/bypass_after.lua --queue 1
--
-- A flow is its protocol and its two ports (either way round), counted in a
-- plain table: a number key allocates nothing per packet, only a new flow
-- adds an entry. Every FORGET seconds the flows not seen since the last time
-- are dropped, so that the table holds the recent flows only.
local after = tonumber(os.getenv("NFQ_BYPASS_AFTER") or "10")
local FORGET = 30

local seen, before = {}, {}

local function on_packet(pkt)
	local l4 = pkt:tcp() or pkt:udp()
	if not l4 then
		pkt:accept()
		return
	end
	local a, b = l4.sport, l4.dport
	if a > b then a, b = b, a end
	local key = (pkt:transport()) * 2 ^ 32 + a * 65536 + b
	local n = (seen[key] or before[key] or 0) + 1
	seen[key] = n
	if n >= after then
		pkt:bypass()
	else
		pkt:accept()
	end
end

return {
	on_packet = on_packet,
	timer_interval = FORGET,
	on_timer = function()
		seen, before = {}, seen
	end,
}

-- The traffic-manipulation pattern for the benchmark: drop every packet and
-- send two altered copies of it instead (copy, new TTL, checksums fixed,
-- sent), as Geneva's duplicate-and-tamper strategies do.
--   ./nfqlua bench/copy_send.lua --queue 0 --send --send-mark 0x1/0x1
-- run.sh lets packets with the send mark pass its NFQUEUE rule, so the
-- copies reach the sink and do not come back.
local nfq = require "nfq"

local send = nfq.send

return function(pkt)
	local copy = pkt:copy()
	local ip = copy:ip()
	if ip then
		ip.ttl = 10
		copy:fix_checksums()
		send(copy)
		ip.ttl = 20
		copy:fix_checksums()
		send(copy)
	end
	pkt:drop()
end

-- Drop TCP and UDP to the listed ports and keep what was dropped in a pcap
-- file for later analysis (tshark -r, tcpdump -r, nfqlua --replay), as
-- Suricata's pcap-log does. Recording never makes the queue wait: when the
-- disk cannot keep up (or is full), packets are still dropped, and the ones
-- not recorded are counted.
--
--   iptables -A INPUT -j NFQUEUE --queue-num 1
--   NFQ_DROP_PORTS=23,5555 NFQ_RECORD=/var/log/nfqlua/drops.pcap nfqlua record_drops.lua --queue 1
--
-- NFQ_RECORD_MAX_BYTES (100 MB) rotates the file (drops.pcap.1 is the newest
-- full one), NFQ_RECORD_KEEP (9) old files are kept.
local nfq = require "nfq"

local path = os.getenv("NFQ_RECORD") or "/var/log/nfqlua/drops.pcap"
local blocked = {}
for port in (os.getenv("NFQ_DROP_PORTS") or "23"):gmatch("%d+") do
	blocked[tonumber(port)] = true
end
local recorder

return {
	-- Opened once the queue is bound, not as the script loads: nfqlua --check
	-- touches no file. A reload's new version gets the same recorder.
	on_start = function()
		recorder = assert(nfq.pcap(path, {
			max_bytes = tonumber(os.getenv("NFQ_RECORD_MAX_BYTES") or 100e6),
			keep = tonumber(os.getenv("NFQ_RECORD_KEEP") or 9),
		}))
	end,
	on_packet = function(pkt)
		local l4 = pkt:tcp() or pkt:udp()
		if l4 and blocked[l4.dport] then
			recorder:write(pkt)
			pkt:drop()
		else
			pkt:accept()
		end
	end,
	on_stop = function()
		local ok, err = recorder:close()
		local s = recorder:stats()
		io.stderr:write(("record_drops: %d dropped packets recorded to %s, %d lost (disk full or too slow)%s\n")
			:format(s.written, path, s.dropped, ok and "" or "; " .. err))
	end,
}

-- The benchmark's accept-all that also records every 10th packet with
-- nfq.pcap: what recording costs the packet path.
--   BENCH_RECORD=/tmp/r.pcap ./nfqlua bench/record_tenth.lua --queue 0
-- Files rotate at 100 MB, one old file kept.
local nfq = require "nfq"

local recorder = assert(nfq.pcap(os.getenv("BENCH_RECORD") or "/tmp/nfqlua-bench-record.pcap",
	{ max_bytes = 100e6, keep = 1 }))
local n = 0

return {
	on_packet = function(pkt)
		n = n + 1
		if n == 10 then
			n = 0
			recorder:write(pkt)
		end
		pkt:accept()
	end,
	on_stop = function()
		local s = recorder:stats()
		io.stderr:write(("record_tenth: written=%d dropped=%d\n"):format(s.written, s.dropped))
	end,
}

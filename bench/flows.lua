-- A stateful filter for the benchmark: the flow of each packet from a flow
-- table (nfq.flows, through flows:state), a counter and a verdict in the
-- flow's own state.
--   ./nfqlua bench/flows.lua --queue 0
-- run.sh sends over 10 and over 100,000 flows (gen -F) to it and to
-- accept_all.lua. BENCH_FLOWS_MAX (default 131072): the table's capacity.
local nfq = require "nfq"

local BLOCKED = 2
local flows = nfq.flows {
	max = tonumber(os.getenv("BENCH_FLOWS_MAX") or "131072"),
	state = "struct { uint32_t packets; uint8_t verdict; }",
}

-- Straight-line code, no loops: the whole callback stays one JIT trace.
-- flows:state is get's fast path: the state pointer, no flow handle.
return function(pkt)
	local state = flows:state(pkt)
	if state then
		state.packets = state.packets + 1
		if state.verdict == BLOCKED then
			pkt:drop()
			return
		end
	end
	pkt:accept()
end

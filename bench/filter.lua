-- A realistic filter for the benchmark: parse the IPv4 and UDP headers from
-- the zero-copy view, drop one destination port, mark another, accept the rest.
--   ./nfqlua bench/filter.lua --queue 0
-- BENCH_DROP_PORT (default 9) and BENCH_MARK_PORT (default 9999, the port
-- run.sh sends to, so every benchmark packet takes the parse-and-mark path).
local bit = require "bit"
local band, bor, lshift = bit.band, bit.bor, bit.lshift

local DROP_PORT = tonumber(os.getenv("BENCH_DROP_PORT") or "9")
local MARK_PORT = tonumber(os.getenv("BENCH_MARK_PORT") or "9999")
local MARK = 0x42

-- Straight-line code, no loops: the whole callback stays one JIT trace.
return function(pkt)
	local p, len = pkt:view()
	-- IPv4, UDP, first fragment (later ones carry no UDP header).
	if len >= 28 and band(p[0], 0xf0) == 0x40 and p[9] == 17
		and band(p[6], 0x1f) == 0 and p[7] == 0 then
		local ihl = band(p[0], 0x0f) * 4
		if len >= ihl + 8 then
			local dport = bor(lshift(p[ihl + 2], 8), p[ihl + 3])
			if dport == DROP_PORT then
				pkt:drop()
				return
			elseif dport == MARK_PORT then
				pkt:set_mark(MARK)
			end
		end
	end
	pkt:accept()
end

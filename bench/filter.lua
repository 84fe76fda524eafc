-- A realistic filter for the benchmark: read the UDP header through the FFI
-- header view (pkt:udp() parses the IPv4 or IPv6 header to find it, and is
-- nil for other protocols and later fragments), drop one destination port,
-- mark another, accept the rest.
--   ./nfqlua bench/filter.lua --queue 0
-- BENCH_DROP_PORT (default 9) and BENCH_MARK_PORT (default 9999, the port
-- run.sh sends to, so every benchmark packet takes the parse-and-mark path).
local DROP_PORT = tonumber(os.getenv("BENCH_DROP_PORT") or "9")
local MARK_PORT = tonumber(os.getenv("BENCH_MARK_PORT") or "9999")
local MARK = 0x42

-- Straight-line code, no loops: the whole callback stays one JIT trace.
return function(pkt)
	local udp = pkt:udp()
	if udp then
		local dport = udp.dport
		if dport == DROP_PORT then
			pkt:drop()
			return
		elseif dport == MARK_PORT then
			pkt:set_mark(MARK)
		end
	end
	pkt:accept()
end

-- Rewrite UDP payloads: replace one word with another, then fix the IP and
-- UDP lengths and checksums.
-- NFQ_FROM=hello NFQ_TO=goodbye nfqlua scripts/examples/rewrite_payload.lua --queue 1
local from = os.getenv("NFQ_FROM") or "hello"
local to = os.getenv("NFQ_TO") or "goodbye"

return function(pkt)
	local payload = pkt:get_payload()
	local rewritten, n = payload:gsub(from, to)
	if n > 0 and pkt:udp() then
		pkt:set_payload(rewritten)
		pkt:fix_checksums()
	end
	pkt:accept()
end

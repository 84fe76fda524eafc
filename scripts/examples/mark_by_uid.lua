-- Mark locally generated packets with 0x10000 + the uid of the socket that
-- sent them, so iptables rules can route or limit by user.
-- nfqlua scripts/examples/mark_by_uid.lua --queue 1 --uid-gid
-- Rule: iptables -A OUTPUT -j NFQUEUE --queue-num 1
local base = 0x10000

return function(pkt)
	local uid = pkt.uid
	if uid then
		pkt:set_mark(base + uid)
	end
	pkt:accept()
end

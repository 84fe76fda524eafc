-- A port firewall: drop TCP and UDP to blocked ports, accept the rest.
-- NFQ_BLOCKED_PORTS="23,5555" nfqlua scripts/examples/port_firewall.lua --queue 1
local blocked = {}
for port in (os.getenv("NFQ_BLOCKED_PORTS") or "23"):gmatch("%d+") do
	blocked[tonumber(port)] = true
end

return function(pkt)
	local l4 = pkt:udp() or pkt:tcp()
	if l4 and blocked[l4.dport] then
		pkt:drop()
	else
		pkt:accept()
	end
end

-- Print a short description of each packet, then accept it.
-- Run: nfqlua scripts/examples/print_and_accept.lua --queue 1
local hooks = { [0] = "PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING" }

return function(pkt)
	print(("#%d %-11s %s"):format(pkt.id, hooks[pkt.hook] or pkt.hook, tostring(pkt)))
	pkt:accept()
end

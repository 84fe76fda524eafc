-- Classify each connection on its first packet and store the class in the
-- connection mark; the kernel handles the rest of the flow without queueing.
-- nfqlua scripts/examples/connmark_classifier.lua --queue 1 --conntrack
-- Rules:
--   iptables -A OUTPUT -m connmark --mark 0 -j NFQUEUE --queue-num 1
--   iptables -A OUTPUT -m connmark --mark 2 -j DROP        # class 2: blocked
local classes = {
	[53] = 1, -- DNS: interactive
	[6666] = 2, -- blocked
}
local default_class = 3

return function(pkt)
	local l4 = pkt:udp() or pkt:tcp()
	local class = l4 and classes[l4.dport] or default_class
	pkt:set_connmark(class)
	if class == 2 then
		pkt:drop()
	else
		pkt:accept()
	end
end

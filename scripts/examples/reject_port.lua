-- An IPS-style reject: TCP and UDP to the listed ports is dropped and its
-- sender told at once, with what iptables REJECT sends (a TCP reset for TCP,
-- an ICMP or ICMPv6 port unreachable otherwise); the rest is accepted.
-- A client's connect() fails with ECONNREFUSED instead of timing out.
--
--   iptables -A INPUT -m mark --mark 0x1/0x1 -j RETURN   # sent packets skip the queue
--   iptables -A INPUT -p tcp -j NFQUEUE --queue-num 1
--   NFQ_REJECT_PORTS=23,5555 nfqlua scripts/examples/reject_port.lua --queue 1 --send --send-mark 0x1/0x1
--
-- NFQ_REJECT_WITH picks another answer, e.g. icmp-admin-prohibited.
local rejected = {}
for port in (os.getenv("NFQ_REJECT_PORTS") or "23"):gmatch("%d+") do
	rejected[tonumber(port)] = true
end
local how = os.getenv("NFQ_REJECT_WITH")
local answered, unanswered = 0, 0

return {
	on_packet = function(pkt)
		local l4 = pkt:tcp() or pkt:udp()
		if not (l4 and rejected[l4.dport]) then
			pkt:accept()
		elseif pkt:reject(how) then
			answered = answered + 1
		else
			-- A reset, an ICMP error or a later fragment gets no answer: dropped all the same.
			unanswered = unanswered + 1
		end
	end,
	on_stop = function()
		io.stderr:write(("reject_port: answered %d packets, dropped %d without an answer\n")
			:format(answered, unanswered))
	end,
}

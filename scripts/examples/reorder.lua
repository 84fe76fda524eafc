-- Swap packets in pairs: hold every first packet and accept it after the next.
-- A held packet still gets the fallback verdict if nothing follows it.
local held

return function(pkt)
	if held then
		pkt:accept()
		held:accept()
		held = nil
	else
		held = pkt:retain()
	end
end

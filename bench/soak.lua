-- The soak test's filter: holds every second packet and releases it after
-- the next (reordering), raises an error on every 1000th, and carries its
-- counters across reloads.
local held
local seen, errors = 0, 0

return {
	on_start = function(state)
		if state then seen, errors = state.seen, state.errors end
	end,
	on_packet = function(pkt)
		seen = seen + 1
		if seen % 1000 == 0 then
			errors = errors + 1
			error("soak: deliberate error " .. errors)
		end
		if held then
			pkt:accept()
			held:accept()
			held = nil
		else
			held = pkt:retain()
		end
	end,
	on_reload = function() return { seen = seen, errors = errors } end,
}

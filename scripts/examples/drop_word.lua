-- Drop every packet whose payload contains a word, accept the rest.
-- Run: NFQ_DROP_WORD=secret nfqlua scripts/examples/drop_word.lua --queue 1
local word = os.getenv("NFQ_DROP_WORD") or "DROP"
local dropped = 0

return {
	on_start = function()
		io.stderr:write(("drop_word: dropping packets that contain %q\n"):format(word))
	end,
	on_packet = function(pkt)
		if pkt:get_payload():find(word, 1, true) then
			dropped = dropped + 1
			pkt:drop()
		else
			pkt:accept()
		end
	end,
	on_stop = function()
		io.stderr:write(("drop_word: dropped %d packets\n"):format(dropped))
	end,
}

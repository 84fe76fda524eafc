-- Per-connection packet and byte counts, and a decision per connection from
-- the first bytes its client sends, however they were segmented: a flow
-- table (nfq.flows) keeps both, and a reload (SIGHUP) hands it to the next
-- version of the script. A TCP connection whose client sends NFQ_FLOW_BLOCK
-- in its first 512 bytes is dropped from then on; every other connection is
-- decided as soon as its request head is whole (a blank line) and is not
-- looked at again. Each flow's counts are printed when it ends.
--
-- nfqlua scripts/examples/flow_counter.lua --queue 1
-- Rule: any, e.g. iptables -A INPUT -i lo -j NFQUEUE --queue-num 1
local nfq = require "nfq"
local ffi = require "ffi"

local block = os.getenv("NFQ_FLOW_BLOCK") or "forbidden"
local REQUEST_BYTES = 512
local UNDECIDED, PASS, BLOCKED = 0, 1, 2

local flows = nfq.flows {
	name = "flow_counter",
	max = tonumber(os.getenv("NFQ_FLOW_MAX")) or 65536,
	state = "struct { uint8_t verdict; }",
	stream_bytes = REQUEST_BYTES,
	on_end = function(flow, why)
		print(("end %s (%s): %d/%d packets, %d/%d bytes"):format(tostring(flow), why, flow.orig_packets,
			flow.reply_packets, flow.orig_bytes, flow.reply_bytes))
	end,
}

-- The request as one line: CR and LF written as \r and \n.
local function shown(request)
	return (request:gsub("\r", "\\r"):gsub("\n", "\\n"))
end

-- The request so far decides the flow, or leaves it undecided.
local function decide(flow, pkt)
	local data, len = flow:stream(pkt, REQUEST_BYTES)
	if not data or len == 0 then return UNDECIDED end
	local request = ffi.string(data, len)
	if request:find(block, 1, true) then
		print(("blocked %s: %s"):format(tostring(flow), shown(request)))
		return BLOCKED
	end
	if len == REQUEST_BYTES or request:find("\r\n\r\n", 1, true) then
		print(("request %s: %s"):format(tostring(flow), shown(request)))
		return PASS
	end
	return UNDECIDED
end

return {
	on_packet = function(pkt)
		local flow = flows:get(pkt)
		if not flow then return pkt:accept() end
		local state = flow.state
		if state.verdict == UNDECIDED and flow.proto == 6 and flow.dir == "orig" then
			state.verdict = decide(flow, pkt)
			if state.verdict ~= UNDECIDED then flow:stream_done() end
		end
		if state.verdict == BLOCKED then return pkt:drop() end
		pkt:accept()
	end,
	-- Flows end while no packet comes, too.
	on_timer = function() flows:expire() end,
	on_stop = function() print(("%d flows at stop"):format(flows:count())) end,
}

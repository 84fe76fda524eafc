-- Run a Geneva strategy (github.com/Kkevsterrr/geneva) on every queued
-- packet, as Geneva's engine does: outbound packets (OUTPUT) are dropped and
-- replaced by what the strategy's trees make of them, inbound ones (INPUT)
-- rewritten or dropped. The strategy is Geneva's DNA, read from the file
-- NFQ_GENEVA_STRATEGY names (default: geneva.strategy next to this script;
-- lines starting with # are comments). SIGHUP reads it again: a strategy that
-- does not parse keeps the running one, and the log says where it is wrong.
--
--   nfqlua scripts/examples/geneva.lua --queue 1 --no-gso --send --send-mark 0x1/0x1
-- Rules (README, Geneva strategies): the packets it sends carry the send
-- mark and skip the queue:
--   iptables -A OUTPUT -p tcp --dport 80 -m mark --mark 0x1/0x1 -j RETURN
--   iptables -A OUTPUT -p tcp --dport 80 -j NFQUEUE --queue-num 1
local geneva = require "nfq.geneva"

local here = (debug.getinfo(1, "S").source:match("^@(.*/)[^/]*$")) or "./"
local path = os.getenv("NFQ_GENEVA_STRATEGY") or here .. "geneva.strategy"

local f, err = io.open(path)
if not f then
	error(("geneva.lua: cannot read the strategy: %s; set NFQ_GENEVA_STRATEGY to a file that holds one"):format(err), 0)
end
-- comments become spaces, so that a parse error's position is the file's
local dna = ("\n" .. f:read("*a")):gsub("\n(%s*#[^\n]*)", function(c) return "\n" .. (" "):rep(#c) end):sub(2)
f:close()
local strategy, parse_err = geneva.parse(dna)
if not strategy then
	error(("geneva.lua: %s does not hold a strategy Geneva's parser would take: %s"):format(path, parse_err), 0)
end

-- Counters: packets in, the verdicts, packets out, and runs of each action.
local COUNTERS = { "packets", "matched", "accepted", "dropped", "rewritten", "sent", "held", "send_errors",
	"lengths_fixed", "duplicate", "tamper", "fragment", "drop", "sleep" }
local stats = strategy.stats

local function counters_line()
	local parts = {}
	for i, name in ipairs(COUNTERS) do parts[i] = name .. "=" .. stats[name] end
	return "geneva: " .. table.concat(parts, " ")
end

return {
	timer_interval = 0.005,
	on_start = function(state)
		-- a reload goes on counting from the version before
		for _, name in ipairs(COUNTERS) do stats[name] = stats[name] + (state and state[name] or 0) end
		print(("geneva: running %s from %s"):format(tostring(strategy), path))
	end,
	on_packet = function(pkt) strategy:apply(pkt) end,
	on_timer = function() strategy:tick() end,
	on_reload = function()
		local state = {}
		for _, name in ipairs(COUNTERS) do state[name] = stats[name] end
		return state
	end,
	on_stop = function() print(counters_line()) end,
	counters_line = counters_line,
}

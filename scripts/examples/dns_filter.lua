-- Drop DNS queries for blocked domains and their subdomains.
-- NFQ_BLOCKED_DOMAINS="ads.example,tracker.test" nfqlua scripts/examples/dns_filter.lua --queue 1
-- Rule: iptables -A OUTPUT -p udp --dport 53 -j NFQUEUE --queue-num 1
local ffi_string = require("ffi").string
local blocked = {}
for name in (os.getenv("NFQ_BLOCKED_DOMAINS") or "ads.example"):gmatch("[^,%s]+") do
	blocked[name:lower()] = true
end

-- The first question's name, as "www.example.com", or nil if malformed.
local function query_name(data, off, len)
	off = off + 12 -- DNS header
	local labels = {}
	while off < len do
		local n = data[off]
		if n == 0 then return table.concat(labels, ".") end
		if n > 63 or off + 1 + n > len then return nil end -- pointers and cut names
		labels[#labels + 1] = ffi_string(data + off + 1, n):lower()
		off = off + 1 + n
	end
end

local function is_blocked(name)
	while name do
		if blocked[name] then return true end
		name = name:match("^[^.]+%.(.+)$")
	end
	return false
end

return function(pkt)
	local udp = pkt:udp()
	if udp and udp.dport == 53 then
		local data, len = pkt:view()
		local _, off = pkt:transport()
		local name = query_name(data, off + 8, len)
		if name and is_blocked(name) then
			print("blocked DNS query for " .. name)
			return pkt:drop()
		end
	end
	pkt:accept()
end

-- Random domain names and addresses that look like blocklists' (random
-- labels under common TLDs; prefixes of the lengths such lists use), for
-- spec/37-sets_spec.lua and bench/sets.lua. Deterministic for a given seed.
local bit = require "bit"

local N = {}

local TLDS = { "com", "com", "com", "com", "net", "net", "org", "io", "de", "ru", "info", "xyz", "co.uk",
	"com.br", "online", "top", "site", "app", "cn", "fr" }
local LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"

--- A generator of random numbers: rand(n) is an integer from 1 to n.
function N.rng(seed)
	local state = seed % 2147483647
	if state <= 0 then state = state + 2147483646 end
	return function(n)
		-- Park and Miller's minimal standard generator: exact in doubles.
		state = state * 48271 % 2147483647
		return state % n + 1
	end
end

function N.label(rand, min, max)
	local len = min + rand(max - min + 1) - 1
	local bytes = {}
	for i = 1, len do
		local c = rand(#LETTERS)
		-- a hyphen now and then, never first or last
		if i > 1 and i < len and rand(12) == 1 then
			bytes[i] = 45
		else
			bytes[i] = LETTERS:byte(c)
		end
	end
	return string.char(unpack(bytes))
end

--- A name such as "ads7-tracker.example.com": one to three labels under a TLD.
function N.name(rand)
	local labels = rand(10) <= 6 and 1 or rand(10) <= 8 and 2 or 3
	local parts = {}
	for i = 1, labels do parts[i] = N.label(rand, 3, 14) end
	parts[#parts + 1] = TLDS[rand(#TLDS)]
	return table.concat(parts, ".")
end

function N.names(count, seed)
	local rand = N.rng(seed)
	local list = {}
	for i = 1, count do list[i] = N.name(rand) end
	return list
end

--- count names written one a line to path; the names.
function N.write_names(path, count, seed)
	local list = N.names(count, seed)
	local f = assert(io.open(path, "w"))
	f:write(table.concat(list, "\n"), "\n")
	f:close()
	return list
end

--- count distinct names written one a line to path, quickly (a hashed
-- counter as the first label, a word and a TLD after it): for load tests.
-- Their bytes in all.
function N.write_counted_names(path, count)
	local words = { "ads", "track", "metrics", "cdn", "pixel", "stats", "promo", "click" }
	local f = assert(io.open(path, "w"))
	local chunk, bytes = {}, 0
	for i = 1, count do
		local name = ("%x%d.%s.%s"):format(i * 2654435761 % 4294967296, i % 7, words[i % #words + 1],
			TLDS[i % #TLDS + 1])
		bytes = bytes + #name
		chunk[#chunk + 1] = name
		if #chunk == 10000 or i == count then
			chunk[#chunk + 1] = ""
			f:write(table.concat(chunk, "\n"))
			chunk = {}
		end
	end
	f:close()
	return bytes
end

--- A random IPv4 address as a number.
function N.ipv4(rand)
	return (rand(65536) - 1) * 65536 + rand(65536) - 1
end

function N.ipv4_text(a)
	return ("%d.%d.%d.%d"):format(bit.rshift(a, 24), bit.band(bit.rshift(a, 16), 255),
		bit.band(bit.rshift(a, 8), 255), bit.band(a, 255))
end

--- A prefix length as IP blocklists have them: mostly /32 and /24, some shorter.
function N.ipv4_length(rand)
	local r = rand(10)
	if r <= 6 then return 32 end
	if r <= 8 then return 24 end
	return 8 + rand(16)
end

--- a masked to its first len bits.
function N.mask(a, len)
	if len == 0 then return 0 end
	return a - a % 2 ^ (32 - len)
end

return N

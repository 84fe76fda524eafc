-- Domain and address sets (nfq.domainset, nfq.ipset): load time and memory
-- of 1,000,000 names, and lookups per second of set:match next to the same
-- C function called in a loop from C (bench/sets_baseline.so, over the same
-- set and queries, in the same rounds) and to the plain Lua way (a table of
-- strings, walked with string.sub). Figures, not assertions; writes its
-- section of bench/RESULTS.md (make bench-sets).
--   make -C bench sets_baseline.so
--   LUA_PATH='lua/?.lua;spec/?.lua;;' LUA_CPATH='lua/?.so;;' luajit bench/sets.lua
local ffi = require "ffi"
local nfq = require "nfq"
local names = require "helpers.names"

local NAMES = tonumber(os.getenv("SETS_NAMES")) or 1000000
local PREFIXES = tonumber(os.getenv("SETS_PREFIXES")) or 200000
local QUERIES, RUNS = 200000, 5
local OUT = os.getenv("OUT") or "bench/RESULTS.md"
local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir) == 0)

-- CPU time, not wall time: the machine is shared, and a pass that waits for
-- the CPU would count the wait.
local now = os.clock

local function rss_kb()
	for line in io.lines("/proc/self/status") do
		local kb = line:match("^VmRSS:%s+(%d+)")
		if kb then return tonumber(kb) end
	end
end

local function median(t)
	table.sort(t)
	return t[math.ceil(#t / 2)]
end

--- Lookups per second of each of the loops (functions that return the
-- time one pass took), median of RUNS rounds; a round runs each once, so
-- the machine's drift reaches them alike, and each timed pass follows an
-- untimed one of the same loop, so that none inherits a cache another
-- loop left cold.
local function rates(loops)
	local samples = {}
	for k = 1, #loops do samples[k] = {} end
	for r = 1, RUNS do
		for k, loop in ipairs(loops) do
			loop()
			samples[k][r] = QUERIES / loop()
		end
	end
	local out = {}
	for k = 1, #loops do out[k] = median(samples[k]) end
	return unpack(out)
end

ffi.cdef [[
uint32_t sets_baseline_domains(const struct nfq_domainset *s, const uint8_t *const *names, const uint32_t *lens,
			       uint32_t n);
uint32_t sets_baseline_ipv4(const struct nfq_ipset *s, const uint8_t *addrs, uint32_t n);
]]
local baseline = ffi.load("bench/sets_baseline.so")

local function write_file(path, text)
	local f = assert(io.open(path, "w"))
	f:write(text)
	f:close()
end

local function fmt(n)
	local s = ("%d"):format(math.floor(n + 0.5))
	return s:reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", "")
end

local rows, notes = {}, {}
--- A line of the table: lookups/s, the ratio to the C loop's, ns per lookup.
local function row(what, rate, c_rate)
	rows[#rows + 1] = ("| %s | %s | %.2f | %.0f |"):format(what, fmt(rate), rate / c_rate, 1e9 / rate)
end

---------------------------------------------------------------- domain names
local list_path = dir .. "/names.txt"
local t_gen = now()
local list = names.write_names(list_path, NAMES, 1)
local name_bytes = 0
for i = 1, #list do name_bytes = name_bytes + #list[i] end
io.stderr:write(("generated %d names in %.1f s\n"):format(NAMES, now() - t_gen))

collectgarbage()
local rss0 = rss_kb()
local loads, walls, set = {}, {}, nil
for r = 1, 3 do
	set = nil -- luacheck: ignore 311 (the last set goes before the next is loaded)
	collectgarbage()
	local t0, wall0 = now(), nfq.now()
	set = assert(nfq.domainset(list_path))
	loads[r], walls[r] = now() - t0, nfq.now() - wall0
end
local rss1 = rss_kb()
local stats = set:stats()
local load_s = median(loads)
-- The bytes of the distinct names, as the set holds them (without the head of each).
local distinct_bytes = set.arena_len - nfq._C.NFQ_DOMAIN_ENTRY_HEAD * stats.entries
local per_entry = (stats.bytes - distinct_bytes) / stats.entries
local function seconds(values)
	local t = {}
	for k, v in ipairs(values) do t[k] = ("%.2f"):format(v) end
	return table.concat(t, ", ")
end
notes[#notes + 1] = ("- Loading %s names (%d distinct, %.1f MB of names) from a file: %.2f s of CPU (3 loads: %s; "
	.. "wall clock %s); the set holds %.1f MB of C memory, %.1f bytes per entry on top of the name bytes (the "
	.. "table at %.0f%% load); RSS grew by %.1f MB."):format(fmt(NAMES), stats.entries, name_bytes / 1e6, load_s,
	seconds(loads), seconds(walls), stats.bytes / 1e6, per_entry, 100 * stats.entries / (set.mask + 1),
	(rss1 - rss0) / 1024)

-- Queries: a third listed names, a third names under listed ones, a third
-- unlisted; some in capitals or with a trailing dot.
local rand = names.rng(7)
local queries = {}
for i = 1, QUERIES do
	local k = i % 3
	local q
	if k == 0 then
		q = list[rand(#list)]
	elseif k == 1 then
		q = names.label(rand, 2, 8) .. "." .. list[rand(#list)]
	else
		q = names.name(rand)
	end
	if rand(10) == 1 then q = q:upper() end
	if rand(10) == 1 then q = q .. "." end
	queries[i] = q
end

-- The queries as bytes in one buffer, as a parser would hand them over.
local total = 0
for i = 1, QUERIES do total = total + #queries[i] end
local qbuf = ffi.new("uint8_t[?]", total)
local qptr = ffi.new("const uint8_t *[?]", QUERIES + 1)
local qlen = ffi.new("uint32_t[?]", QUERIES + 1)
local off = 0
for i = 1, QUERIES do
	ffi.copy(qbuf + off, queries[i], #queries[i])
	qptr[i], qlen[i] = qbuf + off, #queries[i]
	off = off + #queries[i]
end

-- The queries as strings made afresh, one after the other: made during the
-- generation above, they lie scattered over a heap of a million names, and
-- each lookup would pay a cache and TLB miss to reach its string's bytes.
list, queries = nil, nil -- luacheck: ignore 311
collectgarbage()
queries = {}
for i = 1, QUERIES do queries[i] = ffi.string(qptr[i], qlen[i]) end

-- Each loop is a function of its own, so that each gets its own trace.
local function ptr_loop()
	local t0 = now()
	for i = 1, QUERIES do set:match(qptr[i], qlen[i]) end
	return now() - t0
end
local function string_loop()
	local t0 = now()
	for i = 1, QUERIES do set:match(queries[i]) end
	return now() - t0
end

-- The plain Lua way: a table of lowercased names, the query walked label by
-- label. Its load time and heap are measured in a process of its own, where
-- no other reference holds the names' strings.
local TABLE_LOAD = [[
local t, kb0, t0 = {}, collectgarbage("count"), os.clock()
for line in io.lines(arg[1]) do t[line:lower()] = true end
local s = os.clock() - t0
collectgarbage()
print(s, collectgarbage("count") - kb0)
]]
local child_path = dir .. "/table_load.lua"
write_file(child_path, TABLE_LOAD)
local child = assert(io.popen(("luajit %s %s"):format(child_path, list_path)))
local tbl_load, tbl_kb = child:read("*n", "*n")
child:close()
local tbl = {}
for line in io.lines(list_path) do tbl[line:lower()] = true end
local find, sub, lower = string.find, string.sub, string.lower
local function lua_match(t, name)
	name = lower(name)
	if sub(name, -1) == "." then name = sub(name, 1, -2) end
	local found
	while true do
		if t[name] then found = name end
		local dot = find(name, ".", 1, true)
		if not dot then return found end
		name = sub(name, dot + 1)
	end
end
local function lua_loop()
	local t0 = now()
	for i = 1, QUERIES do lua_match(tbl, queries[i]) end
	return now() - t0
end
local function c_loop()
	local t0 = now()
	baseline.sets_baseline_domains(set, qptr, qlen, QUERIES)
	return now() - t0
end
local ptr_rate, str_rate, lua_rate, c_rate = rates { ptr_loop, string_loop, lua_loop, c_loop }
notes[#notes + 1] = ("- The Lua table of the same names: %.2f s to load, %.1f MB of Lua heap (%.0f bytes per name, "
	.. "names included), and %.0f MB more than the set."):format(tbl_load, tbl_kb / 1024, tbl_kb * 1024 / NAMES,
	(tbl_kb * 1024 - stats.bytes) / 1e6)
tbl = nil -- luacheck: ignore 311

row("`domainset:match(ptr, len)`", ptr_rate, c_rate)
row("`domainset:match(string)`", str_rate, c_rate)
row("C: `nfq_domainset_match` in a loop (`bench/sets_baseline.c`)", c_rate, c_rate)
row("Lua table of strings, suffixes by `string.sub`", lua_rate, c_rate)
set = nil -- luacheck: ignore 311
collectgarbage()

---------------------------------------------------------------- addresses
rand = names.rng(11)
local prefixes, by_len = {}, {}
for i = 1, PREFIXES do
	local len = names.ipv4_length(rand)
	local a = names.mask(names.ipv4(rand), len)
	prefixes[i] = { a, len }
end
local plist = {}
for i, p in ipairs(prefixes) do plist[i] = names.ipv4_text(p[1]) .. "/" .. p[2] end
local plist_path = dir .. "/prefixes.txt"
write_file(plist_path, table.concat(plist, "\n") .. "\n")
local ip_t0 = now()
local ipset = assert(nfq.ipset(plist_path))
local ip_load = now() - ip_t0
local ip_stats = ipset:stats()

-- Queries: half inside a listed prefix, half anywhere.
local aq = ffi.new("uint8_t[?]", 4 * (QUERIES + 1))
for i = 1, QUERIES do
	local a
	if i % 2 == 0 then
		local p = prefixes[rand(#prefixes)]
		a = p[1] + (p[2] < 32 and rand(2 ^ (32 - p[2])) - 1 or 0)
	else
		a = names.ipv4(rand)
	end
	for k = 0, 3 do aq[4 * i + k] = math.floor(a / 2 ^ (24 - 8 * k)) % 256 end
end

-- The plain Lua way: a table per prefix length, probed longest first.
for _, p in ipairs(prefixes) do
	by_len[p[2]] = by_len[p[2]] or {}
	by_len[p[2]][p[1]] = true
end
local lens = {}
for len in pairs(by_len) do lens[#lens + 1] = len end
table.sort(lens, function(a, b) return a > b end)
local mask = names.mask
local function lua_ip_match(a)
	for k = 1, #lens do
		local len = lens[k]
		if by_len[len][mask(a, len)] then return len end
	end
end
local aq_num = {}
for i = 1, QUERIES do
	aq_num[i] = ((aq[4 * i] * 256 + aq[4 * i + 1]) * 256 + aq[4 * i + 2]) * 256 + aq[4 * i + 3]
end
local function ip_loop()
	local t0 = now()
	for i = 1, QUERIES do ipset:match(aq + 4 * i, 4) end
	return now() - t0
end
local function lua_ip_loop()
	local t0 = now()
	for i = 1, QUERIES do lua_ip_match(aq_num[i]) end
	return now() - t0
end
local function ip_c_loop()
	local t0 = now()
	baseline.sets_baseline_ipv4(ipset, aq, QUERIES)
	return now() - t0
end
local ip_rate, lua_ip_rate, ip_c_rate = rates { ip_loop, lua_ip_loop, ip_c_loop }

row(("`ipset:match(ptr, 4)`, %s IPv4 prefixes of %d lengths"):format(fmt(ip_stats.entries), #lens), ip_rate,
	ip_c_rate)
row("C: `nfq_ipset_match` in a loop", ip_c_rate, ip_c_rate)
row("Lua tables per prefix length, longest first", lua_ip_rate, ip_c_rate)
notes[#notes + 1] = ("- Loading %s prefixes from a file: %.2f s; %.1f bytes of C memory per entry.")
	:format(fmt(PREFIXES), ip_load, ip_stats.bytes / ip_stats.entries)

os.execute("rm -rf " .. dir)

---------------------------------------------------------------- report
local report = table.concat({
	("## Domain and address sets (%s)"):format(os.date("!%Y-%m-%d %H:%M UTC")),
	"",
	("`bench/sets.lua` (`make bench-sets`): %s queries (a third listed names, a third names under listed "
		.. "ones, a third unlisted; one in ten in capitals, one in ten with a trailing dot) against a set of "
		.. "%s random names under common TLDs; IPv4 addresses, half of them in a listed prefix. Medians of %d "
		.. "rounds, each timing every loop once (CPU time), the C loop over the same set and queries in the same "
		.. "process; the machine shared with other work."):format(fmt(QUERIES), fmt(NAMES), RUNS),
	"",
	"| lookup | lookups/s | vs C | ns/lookup |",
	"|---|---:|---:|---:|",
	table.concat(rows, "\n"),
	"",
	table.concat(notes, "\n"),
	"",
}, "\n")
print(report)

-- In place of the last run's section, as bench/send.sh does for its own.
local old = io.open(OUT)
if old then
	local kept, skip = {}, false
	for line in old:lines() do
		if line:find("^## ") then skip = line:find("^## Domain and address sets") ~= nil end
		if not skip then kept[#kept + 1] = line end
	end
	old:close()
	while kept[#kept] == "" do kept[#kept] = nil end
	local out = assert(io.open(OUT, "w"))
	out:write(table.concat(kept, "\n"), "\n\n", report)
	out:close()
end

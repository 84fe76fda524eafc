-- Domain and address sets (nfq.domainset, nfq.ipset): matching against
-- plain Lua references on random lists and queries, the list formats, bad
-- lines and bad arguments, no allocation per match, and a load of a million
-- names.
local ffi = require "ffi"
local bit = require "bit"
local nfq = require "nfq"
local testing = require "nfq.testing"
local H = require "helpers.net"
local batch = require "helpers.batch"
local names = require "helpers.names"

--- The set, failing the test on nil, err; bad-line warnings go to warnings.
local function domainset(source, warnings)
	return assert(nfq.domainset(source, { warn = function(m) if warnings then warnings[#warnings + 1] = m end end }))
end

local function ipset(source, warnings)
	return assert(nfq.ipset(source, { warn = function(m) if warnings then warnings[#warnings + 1] = m end end }))
end

--------------------------------------------------------------------------
-- The references: what a blocklist means, written plainly.
--------------------------------------------------------------------------

--- Entries as the set should number them: { key -> index }, { index -> exact }.
local function reference_domains(list)
	local index, exact, n = {}, {}, 0
	for _, item in ipairs(list) do
		local is_exact = item:sub(1, 1) == "="
		local key = (is_exact and item:sub(2) or item):lower():gsub("%.$", "")
		if index[key] then
			exact[index[key]] = exact[index[key]] and is_exact
		else
			n = n + 1
			index[key], exact[n] = n, is_exact
		end
	end
	return index, exact
end

--- The longest entry that covers the name, walking its suffixes.
local function reference_match(index, exact, name)
	name = name:lower():gsub("%.$", "")
	local best
	local suffix, whole = name, true
	while suffix ~= "" do
		local i = index[suffix]
		if i and (whole or not exact[i]) and not best then best = i end
		local dot = suffix:find(".", 1, true)
		if not dot then break end
		suffix, whole = suffix:sub(dot + 1), false
	end
	return best
end

local function random_case(rand, s)
	return (s:gsub("%a", function(c) return rand(2) == 1 and c:upper() or c end))
end

--- Names from few labels, so that entries often lie under other entries.
local function small_name(rand, depth)
	local labels = {}
	for i = 1, depth do labels[i] = ({ "a", "b", "c", "dd", "e-f", "xn--p1ai" })[rand(6)] end
	return table.concat(labels, ".")
end

describe("nfq.domainset", function()
	it("matches as a plain Lua reference does, on random lists and queries", function()
		for seed = 1, 4 do
			local rand = names.rng(seed)
			local list = {}
			for i = 1, 1500 do
				local name = small_name(rand, rand(4))
				if rand(5) == 1 then name = "=" .. name end
				if rand(6) == 1 then name = name .. "." end
				list[i] = random_case(rand, name)
			end
			local set = domainset(list)
			local index, exact = reference_domains(list)
			local count = 0
			for key, i in pairs(index) do
				count = count + 1
				assert.equal((exact[i] and "=" or "") .. key, set:entry(i))
			end
			assert.equal(count, #set)
			assert.equal(count, set:count())
			for _ = 1, 3000 do
				local q = random_case(rand, small_name(rand, rand(6)))
				if rand(4) == 1 then q = q .. "." end
				local want = reference_match(index, exact, q)
				assert.equal(want, set:match(q), q)
				local buf = ffi.new("uint8_t[?]", #q)
				ffi.copy(buf, q, #q)
				assert.equal(want, set:match(buf, #q), q)
			end
		end
	end)

	it("matches realistic names: listed ones, names under them, and others", function()
		local list = names.names(20000, 3)
		local set = domainset(list)
		local index, exact = reference_domains(list)
		local rand = names.rng(5)
		local hits = 0
		for i = 1, 6000 do
			local q = i % 3 == 0 and list[rand(#list)] or i % 3 == 1 and names.label(rand, 1, 6) .. "." ..
				list[rand(#list)] or names.name(rand)
			local got = set:match(q)
			assert.equal(reference_match(index, exact, q), got, q)
			if got then hits = hits + 1 end
		end
		assert.is_true(hits >= 4000)
	end)

	it("covers a whole domain, an =entry only its own name, and the most specific entry wins", function()
		local set = domainset { "example.com", "=exact.org", "deep.a.example.com", "=both.net", "both.net" }
		assert.equal(1, set:match("example.com"))
		assert.equal(1, set:match("a.b.example.com"))
		assert.equal(3, set:match("x.deep.a.example.com"))
		assert.equal(3, set:match("deep.a.example.com"))
		assert.is_nil(set:match("xexample.com"))
		assert.is_nil(set:match("com"))
		assert.is_nil(set:match("example.co"))
		assert.is_nil(set:match(""))
		assert.is_nil(set:match("."))
		assert.equal(2, set:match("exact.org"))
		assert.is_nil(set:match("www.exact.org"))
		-- listed both ways: the whole domain is meant
		assert.equal(4, set:match("x.both.net"))
		assert.equal("both.net", set:entry(4))
		assert.equal("=exact.org", set:entry(2))
		assert.equal(4, #set)
	end)

	it("ignores case and one trailing dot, and keeps other bytes as they are", function()
		local set = domainset { "Example.COM.", "xn--80ak6aa92e.com", "\208\191\209\128.example" }
		assert.equal("example.com", set:entry(1))
		assert.equal(1, set:match("WWW.EXAMPLE.COM."))
		assert.equal(1, set:match("eXample.Com"))
		assert.is_nil(set:match("example.com.."))
		assert.equal(2, set:match("a.XN--80AK6AA92E.com"))
		assert.equal(3, set:match("x.\208\191\209\128.example"))
	end)

	it("reads one name a line, hosts files, ||name^ lines and comments, and reports the rest", function()
		local path = H.tmpfile(table.concat({
			"# a blocklist",
			"ads.example.com",
			"",
			"0.0.0.0 tracker.net metrics.net # two names",
			"127.0.0.1 localhost",
			"::1 localhost ip6-localhost ip6-loopback",
			"||adblock.org^",
			"! adblock comment",
			"[Adblock Plus 2.0]",
			"   spaced.example   \r",
			"two names.example",
			"=only.this.one",
			"bad_but_ok.example",
			"@@||allowed.org^",
			"example.org##.banner",
			"1.2.3.4",
			"ads.example.com",
			"no-newline.example",
		}, "\n"))
		local warnings = {}
		local set = domainset(path, warnings)
		for name, entry in pairs {
			["ads.example.com"] = "ads.example.com", ["x.tracker.net"] = "tracker.net",
			["metrics.net"] = "metrics.net", ["a.adblock.org"] = "adblock.org",
			["spaced.example"] = "spaced.example", ["only.this.one"] = "=only.this.one",
			["bad_but_ok.example"] = "bad_but_ok.example", ["no-newline.example"] = "no-newline.example",
		} do
			assert.equal(entry, set:entry(assert(set:match(name), name)))
		end
		assert.is_nil(set:match("localhost"))
		assert.is_nil(set:match("ip6-localhost"))
		assert.is_nil(set:match("a.only.this.one"))
		assert.is_nil(set:match("allowed.org"))
		assert.is_nil(set:match("example.org"))
		local stats = set:stats()
		assert.same({ entries = 8, lines = 18, added = 8, duplicates = 1, skipped = 6, bad = 4,
			bytes = stats.bytes }, stats)
		assert.equal(1, #warnings)
		assert.matches(path, warnings[1], 1, true)
		assert.matches("4 of 18 lines are not names, ignored: line 11 \"two names.example\", line 14 "
			.. "\"@@||allowed.org^\", line 15 \"example.org##.banner\", line 16 \"1.2.3.4\"", warnings[1], 1, true)
	end)

	it("reads dnsmasq lines that block, and not those that forward", function()
		local warnings = {}
		local set = domainset({ "address=/ads.example/track.example/0.0.0.0", "address=/nx.example/",
			"server=/local.example/", "local=/other.example/", "server=/corp.example/10.0.0.53",
			"address=//0.0.0.0", "address=/bad..name/" }, warnings)
		assert.same({ "ads.example", "track.example", "nx.example", "local.example", "other.example" },
			{ set:entry(1), set:entry(2), set:entry(3), set:entry(4), set:entry(5) })
		assert.equal(5, #set)
		assert.equal(2, set:match("a.track.example"))
		assert.is_nil(set:match("corp.example"))
		assert.matches("3 of 7 items are not names, ignored: item 5 \"server=/corp.example/10.0.0.53\", item 6 "
			.. "\"address=//0.0.0.0\", item 7 \"address=/bad..name/\"", warnings[1], 1, true)
	end)

	it("names the first five bad items of a list and counts the rest", function()
		local list = {}
		for i = 1, 20 do list[i] = i % 2 == 0 and ("bad name %d"):format(i) or ("ok%d.example"):format(i) end
		list[21] = ("x"):rep(64) .. ".com"
		list[22] = ("y"):rep(250) .. ".com"
		local warnings = {}
		local set = domainset(list, warnings)
		assert.equal(10, #set)
		assert.equal(1, #warnings)
		assert.matches("the list: 12 of 22 items are not names, ignored: item 2 \"bad name 2\", item 4 "
			.. "\"bad name 4\", item 6 \"bad name 6\", item 8 \"bad name 8\", item 10 \"bad name 10\", ...",
			warnings[1], 1, true)
	end)

	it("says nothing when every line is good, and writes its warning to stderr by default", function()
		local warned = 0
		assert(nfq.domainset({ "a.example" }, { warn = function() warned = warned + 1 end }))
		assert.equal(0, warned)
		local out = H.sh(("cd %s && LUA_PATH='lua/?.lua;;' LUA_CPATH='lua/?.so;;' luajit -e "
			.. "'assert(require(\"nfq\").domainset { \"ok.example\", \"not ok\" })' 2>&1"):format(H.root))
		assert.matches("nfq.domainset: the list: 1 of 2 items are not names, ignored: item 2 \"not ok\"", out, 1, true)
	end)

	it("gives back the room it reserved for lines that held no name", function()
		local list = names.names(3000, 4)
		local plain = domainset(H.tmpfile(table.concat(list, "\n")))
		local commented = {}
		for i, name in ipairs(list) do commented[i] = ("# comment %d\n#\n\n%s"):format(i, name) end
		local sparse = domainset(H.tmpfile(table.concat(commented, "\n")))
		assert.equal(#plain, #sparse)
		assert.equal(plain:stats().bytes, sparse:stats().bytes)
		assert.equal(plain.mask, sparse.mask)
	end)

	it("returns nil and an error naming the file it cannot read", function()
		local set, err = nfq.domainset("/nonexistent/list.txt")
		assert.is_nil(set)
		assert.equal("nfq.domainset: cannot read /nonexistent/list.txt: No such file or directory", err)
		set, err = nfq.domainset("/tmp")
		assert.is_nil(set)
		assert.equal("nfq.domainset: cannot read /tmp: Is a directory", err)
	end)

	it("raises on arguments of the wrong type", function()
		local set = domainset { "a.example" }
		for _, case in ipairs {
			{ function() nfq.domainset(42) end, "nfq.domainset expects a file name or a list of strings, got number 42" },
			{ function() nfq.domainset { "a", 7 } end, "nfq.domainset: the list's items must be strings, item 2 is number 7" },
			{ function() nfq.domainset({}, 1) end, "nfq.domainset: options must be a table, got number 1" },
			{ function() nfq.domainset({}, { warm = print }) end, "nfq.domainset: unknown option 'warm'" },
			{ function() nfq.domainset({}, { warn = true }) end, "nfq.domainset: warn must be a function" },
			{ function() set:match(42) end, "domainset:match expects a string, or a pointer and a length, got number 42" },
			{ function() set:match(ffi.new("uint8_t[4]")) end, "the length must be a whole number of bytes, got nil" },
			{ function() set:match(ffi.new("uint8_t[4]"), -1) end, "the length must be a whole number of bytes" },
			{ function() set:entry(0) end, "the index must be an integer from 1 to 1 (the set's size), got number 0" },
			{ function() set:entry(2) end, "the index must be an integer from 1 to 1" },
			{ function() set:entry("1") end, "the index must be an integer from 1 to 1" },
		} do
			local ok, err = pcall(case[1])
			assert.is_false(ok)
			assert.matches(case[2], err, 1, true)
			assert.matches("37%-sets_spec.lua:%d+:", err)
		end
	end)

	it("loads a million names well under 10 s, in under 64 bytes per name beside the names", function()
		local path = H.tmpfile()
		local name_bytes = names.write_counted_names(path, 1000000)
		local t0 = os.clock()
		local set = domainset(path)
		local seconds = os.clock() - t0
		os.remove(path)
		local stats = set:stats()
		assert.equal(1000000, stats.entries)
		assert.is_true(seconds < 10, ("loading took %.1f s"):format(seconds))
		local per_name = (stats.bytes - name_bytes) / stats.entries
		assert.is_true(per_name < 64, ("%.1f bytes per name"):format(per_name))
		io.stderr:write(("\n1,000,000 names loaded in %.2f s of CPU, %.1f MB, %.1f bytes per name beside the "
			.. "names\n"):format(seconds, stats.bytes / 1e6, per_name))
		assert.equal(1, set:match("x.9e3779b11.track.com"))
		set = nil -- luacheck: ignore 311
		collectgarbage()
	end)
end)

--------------------------------------------------------------------------
-- Addresses
--------------------------------------------------------------------------

--- An address as a 16-byte (IPv6) or 4-byte (IPv4) string from numbers.
local function bytes_of(t) return string.char(unpack(t)) end

local ZEROS = ("\0"):rep(16)

--- addr (bytes) with all but its first len bits cleared.
local function masked(addr, len)
	local whole = math.floor(len / 8)
	if whole == #addr then return addr end
	local partial = bit.band(addr:byte(whole + 1), bit.band(bit.lshift(0xff, 8 - len % 8), 0xff))
	return addr:sub(1, whole) .. string.char(partial) .. ZEROS:sub(1, #addr - whole - 1)
end

--- The longest of the prefixes that holds addr: by_len[len][masked address] is a prefix's index.
local function reference_lpm(by_len, addr)
	for len = #addr * 8, 0, -1 do
		local found = by_len[len] and by_len[len][masked(addr, len)]
		if found then return found end
	end
end

local function text_of(addr)
	if #addr == 4 then return ("%d.%d.%d.%d"):format(addr:byte(1, 4)) end
	local groups = {}
	for i = 1, 16, 2 do groups[#groups + 1] = ("%x"):format(addr:byte(i) * 256 + addr:byte(i + 1)) end
	return table.concat(groups, ":")
end

--- Random prefixes crowded into a few top bytes, so that they nest often:
-- their text, the reference's table and how many distinct ones.
local function random_prefixes(rand, count, size)
	local list, by_len, n = {}, {}, 0
	for i = 1, count do
		local a = {}
		for k = 1, size do a[k] = k <= size / 4 and (k == 1 and 32 or 13) or rand(4) - 1 end
		local addr = bytes_of(a)
		local len = rand(size * 8 + 1) - 1
		list[i] = text_of(addr) .. (len == size * 8 and rand(2) == 1 and "" or "/" .. len)
		local key = masked(addr, len)
		by_len[len] = by_len[len] or {}
		if not by_len[len][key] then
			n = n + 1
			by_len[len][key] = n
		end
	end
	return list, by_len, n
end

describe("nfq.ipset", function()
	for _, family in ipairs { { "IPv4", 4 }, { "IPv6", 16 } } do
		it("finds the longest prefix as a plain Lua reference does, " .. family[1], function()
			local size = family[2]
			for seed = 1, 3 do
				local rand = names.rng(seed * 17)
				local list, by_len, count = random_prefixes(rand, 600, size)
				local set = ipset(list)
				assert.equal(count, #set)
				local buf = ffi.new("uint8_t[16]")
				for _ = 1, 3000 do
					local a = {}
					for k = 1, size do a[k] = k <= size / 4 and (k == 1 and 32 or 13) or rand(4) - 1 end
					if rand(8) == 1 then a[1] = 33 end
					local addr = bytes_of(a)
					local want = reference_lpm(by_len, addr)
					ffi.copy(buf, addr, size)
					assert.equal(want, set:match(buf, size), text_of(addr))
					assert.equal(want, set:match(text_of(addr)), text_of(addr))
				end
			end
		end)
	end

	it("keeps IPv4 and IPv6 apart, masks host bits, and writes entries as text", function()
		local set = ipset { "10.0.0.0/8", "10.1.0.0/16", "192.0.2.1", "2001:db8::/32", "2001:db8:1::/48",
			"10.1.2.3/8", "0.0.0.0/0", "::ffff:0:0/96", "2001:DB8:0:0:0:0:0:1" }
		assert.same({ "10.0.0.0/8", "10.1.0.0/16", "192.0.2.1", "2001:db8::/32", "2001:db8:1::/48", "0.0.0.0/0",
			"::ffff:0.0.0.0/96", "2001:db8::1" }, { set:entry(1), set:entry(2), set:entry(3), set:entry(4),
			set:entry(5), set:entry(6), set:entry(7), set:entry(8) })
		assert.equal(8, #set)
		assert.equal(1, set:match("10.200.0.1"))
		assert.equal(2, set:match("10.1.255.255"))
		assert.equal(3, set:match("192.0.2.1"))
		assert.equal(6, set:match("192.0.2.2"))
		assert.equal(8, set:match("2001:db8::1"))
		assert.equal(4, set:match("2001:db8::2"))
		assert.equal(5, set:match("2001:db8:1::2"))
		assert.equal(7, set:match("::ffff:10.0.0.1"))
		assert.is_nil(set:match("2001:db9::1"))
		local empty = ipset {}
		assert.is_nil(empty:match("0.0.0.0"))
		assert.equal(0, #empty)
	end)

	it("takes addresses as arrays, pointers and packet header fields, and matches packets' addresses", function()
		local set = ipset { "192.0.2.0/24", "2001:db8::/32" }
		local a4 = ffi.new("uint8_t[4]", 192, 0, 2, 9)
		assert.equal(1, set:match(a4))
		assert.equal(1, set:match(ffi.cast("const uint8_t *", a4), 4))
		local v4 = nfq.buffer(testing.packet { proto = "udp", src = "192.0.2.7", dst = "198.51.100.1" })
		assert.equal(1, set:match(v4:ip().src))
		assert.is_nil(set:match(v4:ip().dst))
		assert.equal(1, set:match_src(v4))
		assert.is_nil(set:match_dst(v4))
		local v6 = nfq.buffer(testing.packet { version = 6, proto = "tcp", src = "2001:db9::1", dst = "2001:db8::5" })
		assert.equal(2, set:match(v6:ip6().dst))
		assert.is_nil(set:match_src(v6))
		assert.equal(2, set:match_dst(v6))
		assert.is_nil(set:match_src(nfq.buffer("\96\0\0")))
	end)

	it("reads one entry a line, the first field of each, with # and ; comments, and reports the rest", function()
		local path = H.tmpfile(table.concat({
			"# addresses", "; Spamhaus style", "", "192.0.2.0/24 ; SBL123", "198.51.100.7 # a host",
			"203.0.113.0/25\t# tab", "2001:db8::/32", "1.2.3.4/33", "300.1.1.1", "1.2.3.4-1.2.3.9",
			"example.com", "10.0.0.0/", "10.0.0.0/08x", "192.0.2.0/24", "  10.9.9.9  \r",
		}, "\n"))
		local warnings = {}
		local set = ipset(path, warnings)
		local stats = set:stats()
		assert.same({ entries = 5, lines = 15, added = 5, duplicates = 1, skipped = 3, bad = 6,
			bytes = stats.bytes }, stats)
		assert.equal(1, set:match("192.0.2.200"))
		assert.equal(2, set:match("198.51.100.7"))
		assert.equal(3, set:match("203.0.113.127"))
		assert.is_nil(set:match("203.0.113.128"))
		assert.equal(5, set:match("10.9.9.9"))
		assert.equal(1, #warnings)
		assert.matches("6 of 15 lines are not addresses or prefixes, ignored: line 8 \"1.2.3.4/33\", line 9 "
			.. "\"300.1.1.1\", line 10 \"1.2.3.4-1.2.3.9\", line 11 \"example.com\", line 12 \"10.0.0.0/\", ...",
			warnings[1], 1, true)
	end)

	it("returns nil and an error naming the file it cannot read, and raises on wrong arguments", function()
		local set, err = nfq.ipset("/nonexistent/ips.txt")
		assert.is_nil(set)
		assert.equal("nfq.ipset: cannot read /nonexistent/ips.txt: No such file or directory", err)
		set = ipset { "192.0.2.0/24" }
		for _, case in ipairs {
			{ function() nfq.ipset(true) end, "nfq.ipset expects a file name or a list of strings, got boolean" },
			{ function() set:match("not an address") end, "ipset:match: string \"not an address\" is not an IPv4" },
			{ function() set:match({}) end, "ipset:match expects an address (4 or 16 bytes, or a string), got table" },
			{ function() set:match(ffi.new("uint8_t[5]")) end, "an address is 4 or 16 bytes, got number 5" },
			{ function() set:match(ffi.new("uint8_t[4]"), 6) end, "an address is 4 or 16 bytes, got number 6" },
			{ function() set:match(ffi.cast("const uint8_t *", "1234")) end, "an address is 4 or 16 bytes, got number 8" },
			{ function() set:match_src("packet") end, "ipset:match_src expects a packet or a packet buffer" },
			{ function() set:entry(2) end, "ipset:entry: the index must be an integer from 1 to 1" },
		} do
			local ok, msg = pcall(case[1])
			assert.is_false(ok)
			assert.matches(case[2], msg, 1, true)
			assert.matches("37%-sets_spec.lua:%d+:", msg)
		end
	end)
end)

describe("sets in a daemon script", function()
	local function le32(n)
		return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256, math.floor(n / 16777216) % 256)
	end

	--- A pcap file of Ethernet frames holding the IP packets.
	local function pcap(packets)
		local out = { le32(0xa1b2c3d4), "\2\0\4\0", le32(0), le32(0), le32(65535), le32(1) }
		for i, ip in ipairs(packets) do
			local frame = "\2\0\0\0\0\2\2\0\0\0\0\1" .. (ip:byte(1) >= 0x60 and "\134\221" or "\8\0") .. ip
			out[#out + 1] = le32(1700000000 + i) .. le32(0) .. le32(#frame) .. le32(#frame) .. frame
		end
		return H.tmpfile(table.concat(out), ".pcap")
	end

	it("are loaded at the top level and drop listed DNS names and addresses under nfqlua --replay", function()
		local names_file = H.tmpfile("# blocked\n0.0.0.0 ads.example\n||tracker.example^\n")
		local ips_file = H.tmpfile("198.51.100.0/24\n2001:db8:bad::/48\n")
		-- The query's name, from its labels, into one buffer: the set reads it by pointer.
		local script = H.tmpfile(([[
local ffi = require "ffi"
local nfq = require "nfq"
local names = assert(nfq.domainset(%q))
local addresses = assert(nfq.ipset(%q))
local name = ffi.new("uint8_t[256]")
return function(pkt)
	local udp = pkt:udp()
	if addresses:match_dst(pkt) then return pkt:drop() end
	if udp and udp.dport == 53 then
		local p, len = pkt:view()
		local at, n = 28 + 12, 0
		while at < len and p[at] ~= 0 and n + p[at] < 255 do
			if n > 0 then name[n] = 46; n = n + 1 end
			ffi.copy(name + n, p + at + 1, p[at])
			n, at = n + p[at], at + 1 + p[at]
		end
		if names:match(name, n) then return pkt:drop() end
	end
	pkt:accept()
end
]]):format(names_file, ips_file), ".lua")
		local cap = pcap {
			testing.packet { proto = "udp", dport = 53, payload = H.dns_query("www.ads.example") },
			testing.packet { proto = "udp", dport = 53, payload = H.dns_query("fine.example") },
			testing.packet { proto = "udp", dport = 53, payload = H.dns_query("a.b.TRACKER.example") },
			testing.packet { proto = "tcp", dst = "198.51.100.9", dport = 443 },
			testing.packet { proto = "tcp", dst = "203.0.113.9", dport = 443 },
			testing.packet { proto = "tcp", src = "2001:db8::1", dst = "2001:db8:bad::9", dport = 443 },
			testing.packet { proto = "tcp", src = "2001:db8::1", dst = "2001:db8:600d::9", dport = 443 },
		}
		local rc, out = H.run_nfqlua("--replay " .. cap .. " " .. script)
		assert.equal(0, rc, out)
		local verdicts = {}
		for v in out:gmatch("%-> (%a+)") do verdicts[#verdicts + 1] = v end
		assert.same({ "drop", "accept", "drop", "drop", "accept", "drop", "accept" }, verdicts, out)
	end)
end)

describe("sets on the per-packet path", function()
	it("allocate nothing per match over a million packets", function()
		jit.flush()
		local domains = domainset(names.names(5000, 9))
		local addresses = ipset { "127.0.0.0/8", "10.0.0.0/8" }
		local name = ffi.new("uint8_t[32]")
		ffi.copy(name, "x.qrs.example.com")
		local hits = 0
		local run_batch, keep = batch.synthetic_queue(function(pkt)
			local ip = pkt:ip()
			if addresses:match(ip.src) and addresses:match_dst(pkt) and not domains:match(name, 17) then
				hits = hits + 1
			end
			pkt:accept()
		end, function(i) return 8000 + i end)
		for _ = 1, 2000 do run_batch() end
		collectgarbage()
		collectgarbage()
		collectgarbage("stop")
		local before = collectgarbage("count")
		hits = 0
		for _ = 1, 1000000 / batch.SIZE do run_batch() end
		local grown = collectgarbage("count") - before
		collectgarbage("restart")
		assert.is_true(grown < 16, ("the Lua heap grew by %.1f KB over 1M packets"):format(grown))
		assert.equal(1000000 - 1000000 % batch.SIZE, hits)
		assert.is_not_nil(keep)
	end)

	it("compile without trace aborts in the sets module", function()
		local jit_util = require "jit.util"
		jit.flush()
		local domains = domainset { "example.com" }
		local addresses = ipset { "127.0.0.0/8" }
		local name = ffi.new("uint8_t[16]")
		ffi.copy(name, "a.example.com")
		local run_batch, keep = batch.synthetic_queue(function(pkt)
			if addresses:match_src(pkt) and addresses:match(pkt:ip().dst) and domains:match(name, 13) then
				pkt:accept()
			else
				pkt:drop()
			end
		end, function(i) return 8000 + i end)
		local aborts = {}
		local function on_trace(what, _, func, pc)
			if what == "abort" then
				local info = jit_util.funcinfo(func, pc)
				if (info.source or ""):find("nfq/sets.lua", 1, true) then
					aborts[#aborts + 1] = info.source .. ":" .. tostring(info.currentline)
				end
			end
		end
		-- From the first batch: a trace that aborts early is blacklisted, and then aborts no more.
		jit.attach(on_trace, "trace")
		for _ = 1, 6000 do run_batch() end
		jit.attach(on_trace)
		assert.same({}, aborts)
		assert.is_not_nil(keep)
	end)

	it("replay the fuzz corpus without a crash", function()
		local files = H.sh(("ls %s/spec/fuzz/corpus/sets | wc -l"):format(H.root))
		local out = H.sh(("cd %s && build/replay_sets spec/fuzz/corpus/sets/*"):format(H.root))
		assert.equal(tonumber(files), tonumber(out:match("replayed (%d+) inputs")))
		assert.is_true(tonumber(files) > 0)
	end)
end)

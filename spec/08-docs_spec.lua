-- The README is the API reference: every public function, method and
-- packet field of the modules must appear in it. Adding one without a line
-- of documentation fails here.
local H = require "helpers.net"
local nfq = require "nfq"
local testing = require "nfq.testing"

local readme = assert(H.read_file(H.root .. "/README.md"))
local source = assert(H.read_file(H.root .. "/lua/nfq.lua"))

local function documented(text)
	return readme:find(text, 1, true) ~= nil
end

local function undocumented(names, form)
	local missing = {}
	for _, name in ipairs(names) do
		if not documented(form:format(name)) then missing[#missing + 1] = form:format(name) end
	end
	table.sort(missing)
	return missing
end

local function public_keys(t)
	local names = {}
	for k in pairs(t) do
		if type(k) == "string" and not k:find("^_") then names[#names + 1] = k end
	end
	return names
end

-- Methods are found in the source: the Packet and Queue tables are private.
local function methods(class)
	local names, seen = {}, {}
	for _, pattern in ipairs { "function " .. class .. ":([%w_]+)%(", "\n" .. class .. "%.([%w_]+) =",
		"\n" .. class .. "%[\"([%w_]+)\"%] =" } do
		for name in source:gmatch(pattern) do
			if not name:find("^_") and not seen[name] then
				seen[name] = true
				names[#names + 1] = name
			end
		end
	end
	return names
end

describe("README", function()
	it("documents every public name of nfq", function()
		local names = public_keys(nfq)
		assert.is_true(#names >= 10)
		assert.same({}, undocumented(names, "nfq.%s"))
	end)

	it("documents every queue method", function()
		local names = methods("Queue")
		assert.is_true(#names >= 7, "found: " .. table.concat(names, " "))
		for _, name in ipairs(names) do
			assert.equal("function", type(nfq.new()[name]), "q:" .. name .. " is a method")
		end
		assert.same({}, undocumented(names, "q:%s("))
	end)

	it("documents every packet method and metadata field", function()
		local names = methods("Packet")
		assert.is_true(#names >= 25, "found: " .. table.concat(names, " "))
		local missing = {}
		for _, name in ipairs(names) do
			if name ~= "repeat" and not documented("pkt:" .. name .. "(") and not documented(name .. "()") then
				missing[#missing + 1] = "pkt:" .. name .. "()"
			end
		end
		assert.is_true(documented('pkt["repeat"](pkt)'))
		local fields = source:match("local metadata = (%b{})")
		assert.truthy(fields, "the metadata table of nfq.lua")
		for name in fields:gmatch("\n\t([%w_]+) =") do
			if not documented("pkt." .. name) then missing[#missing + 1] = "pkt." .. name end
		end
		table.sort(missing)
		assert.same({}, missing)
	end)

	it("documents nfq.testing", function()
		assert.same({}, undocumented(public_keys(testing), "testing.%s"))
	end)

	it("documents every daemon flag", function()
		local flags = {}
		for flag in H.sh(H.nfqlua .. " --help"):gmatch("%-%-([%w-]+)") do flags[#flags + 1] = flag end
		assert.is_true(#flags >= 25)
		local missing = {}
		for _, flag in ipairs(flags) do
			if not readme:find("|[^\n]*`%-%-" .. flag:gsub("%-", "%%-") .. "[ `]") then
				missing[#missing + 1] = "--" .. flag
			end
		end
		assert.same({}, missing)
		local man = assert(H.read_file(H.root .. "/nfqlua.1"))
		missing = {}
		for _, flag in ipairs(flags) do
			if not man:find("\\-\\-" .. flag:gsub("%-", "\\-"), 1, true) then missing[#missing + 1] = "--" .. flag end
		end
		assert.same({}, missing, "in nfqlua.1")
	end)
end)

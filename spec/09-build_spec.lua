-- The build: header dependencies, the embedded bytecode, the symbols the
-- binaries export, and one version for the C core, the Lua modules and the
-- daemon. Dependencies are checked with dry runs (make -n -W), which leave
-- the tree that make test built as it is.
local ffi = require "ffi"
local H = require "helpers.net"

local BUILT = "all asan tsan fuzz-replay-build build/fuzz_packet build/fuzz_headers"

local function sorted_keys(t)
	local list = {}
	for k in pairs(t) do list[#list + 1] = k end
	table.sort(list)
	return list
end

local function set(list)
	local s = {}
	for _, v in ipairs(list) do s[v] = true end
	return s
end

local function make_n(args)
	return H.sh(("cd %s && make -n %s"):format(H.root, args))
end

-- What a dry run compiles, as { [object] = source }.
local function compiled(args)
	local objects = {}
	for object, source in make_n(args):gmatch("%-c %-o (%S+) (%S+)\n") do objects[object] = source end
	return objects
end

local function files(pattern)
	local list = {}
	for path in H.sh(("cd %s && ls %s"):format(H.root, pattern)):gmatch("%S+") do list[#list + 1] = path end
	return list
end

-- Whether path includes header, directly or through other headers of src/.
local function includes(path, header, seen)
	seen = seen or {}
	if seen[path] then return false end
	seen[path] = true
	for name in H.read_file(H.root .. "/" .. path):gmatch('#include "([^"]+)"') do
		local included = "src/" .. name:match("[^/]+$")
		if included == header or (H.read_file(H.root .. "/" .. included) and includes(included, header, seen)) then
			return true
		end
	end
	return false
end

-- The functions declared in text: lines that start with a type and name one.
local function declared(text, into)
	for name in text:gmatch("\n[%a_][%w_ ]-[%s%*]+(nfq_[%w_]+)%(") do into[#into + 1] = name end
	return into
end

-- The FFI entry points: the CDEF blocks of the headers the Makefile names.
local ffi_entries = {}
local cdef_headers = assert(H.read_file(H.root .. "/Makefile")):match("\nCDEF_HEADERS = (.-[^\\])\n")
for header in cdef_headers:gsub("\\\n", " "):gmatch("%S+") do
	declared(assert(H.read_file(H.root .. "/" .. header)):match("BEGIN CDEF(.-)END CDEF"), ffi_entries)
end
local api = declared(assert(H.read_file(H.root .. "/src/nfq_engine.h")), {})
-- The daemon's own FFI entry points: the capture reader of --replay.
local replay_entries = {}
for name in assert(H.read_file(H.root .. "/src/nfq_replay.h")):gmatch("NFQ_REPLAY_FFI [%w_ ]-[%s%*]+(nfq_[%w_]+)%(") do
	replay_entries[#replay_entries + 1] = name
end

local function exported(path)
	local names = {}
	for name in H.sh("nm -D --defined-only " .. path):gmatch("%x+ %a (%S+)") do names[#names + 1] = name end
	return names
end

-- The embedded modules as make builds them: { [module name] = lua file }.
local function embedded()
	local modules = {}
	for name, file in make_n("-B build/libnfqlua.a"):gmatch("%-b %-n (%S+) lua/(%S+) ") do
		modules[name] = file
	end
	return modules
end

describe("make", function()
	it("rebuilds every object that includes a header when the header changes, and only those", function()
		local before = compiled(BUILT) -- empty after make test's build; what is missing otherwise
		local sources = compiled("-B " .. BUILT)
		assert.is_not_nil(sources["build/asan/nfq_engine.o"])
		assert.is_not_nil(sources["build/replay/fuzz_packet.o"])
		assert.is_not_nil(sources["build/fuzz/nfq_queue.o"])
		local headers = files("src/*.h")
		assert.is_true(#headers >= 5)
		for _, header in ipairs(headers) do
			local expected = {}
			for object, source in pairs(sources) do
				if before[object] or includes(source, header) then expected[object] = source end
			end
			assert.is_not_nil(next(expected), header .. " is included somewhere")
			assert.same(sorted_keys(expected), sorted_keys(compiled(("-W %s %s"):format(header, BUILT))), header)
		end
	end)

	it("takes the version from VERSION into the C core and the generated lua/nfq/cdef.lua", function()
		local before = compiled(BUILT)
		local expected = set { "build/nfq_version.o", "build/asan/nfq_version.o", "build/tsan/nfq_version.o",
			"build/fuzz/nfq_version.o" }
		for object in pairs(before) do expected[object] = true end
		local out = make_n("-W VERSION " .. BUILT)
		assert.same(sorted_keys(expected), sorted_keys(compiled("-W VERSION " .. BUILT)))
		assert.matches("> lua/nfq/cdef.lua", out, 1, true)
		assert.matches("-b -n nfq.cdef lua/nfq/cdef.lua", out, 1, true)
	end)

	it("compiles each embedded module with one rule, named from its path, nfq.testing left out", function()
		local modules = embedded()
		for _, name in ipairs { "nfq", "nfq.cdef", "nfq.engine", "nfq.headers" } do
			assert.is_not_nil(modules[name], name)
		end
		assert.is_nil(modules["nfq.testing"])
		local archive = H.sh("nm " .. H.root .. "/build/libnfqlua.a")
		for name, file in pairs(modules) do
			assert.equal(name, (file:gsub("%.lua$", ""):gsub("/", ".")))
			assert.matches(" R luaJIT_BC_" .. name:gsub("%.", "_") .. "\n", archive, 1, true)
		end
	end)
end)

describe("exported symbols", function()
	it("of lua/nfq/core.so are the FFI entry points of the CDEF headers", function()
		assert.is_true(#ffi_entries >= 20)
		assert.same(sorted_keys(set(ffi_entries)), sorted_keys(set(exported(H.root .. "/lua/nfq/core.so"))))
	end)

	it("of libnfqlua.so and nfqlua are those, the API of nfq_engine.h and the embedded bytecode, "
		.. "and the daemon's replay reader", function()
		assert.is_true(#api >= 10)
		local expected = set(ffi_entries)
		for _, name in ipairs(api) do expected[name] = true end
		for name in pairs(embedded()) do expected["luaJIT_BC_" .. name:gsub("%.", "_")] = true end
		assert.same(sorted_keys(expected), sorted_keys(set(exported(H.root .. "/build/libnfqlua.so"))))
		assert.is_true(#replay_entries >= 5)
		for _, name in ipairs(replay_entries) do expected[name] = true end
		-- The toolchain's own (_start, _edata, data_start...) aside.
		local daemon = {}
		for _, name in ipairs(exported(H.root .. "/nfqlua")) do
			if not name:find("^_") and name ~= "data_start" then daemon[name] = true end
		end
		assert.same(sorted_keys(expected), sorted_keys(daemon))
	end)

	it("share no name with libnetfilter_queue, which uses the same nfq_ prefix", function()
		local dir = H.sh("pkg-config --variable=libdir libnetfilter_queue"):gsub("%s+$", "")
		local theirs = set(exported(dir .. "/libnetfilter_queue.so"))
		assert.is_true(theirs.nfq_open and theirs.nfq_set_verdict and theirs.nfq_nlmsg_put)
		local clashes = {}
		for _, path in ipairs { "/lua/nfq/core.so", "/build/libnfqlua.so", "/nfqlua" } do
			for _, name in ipairs(exported(H.root .. path)) do
				if theirs[name] then clashes[name] = true end
			end
		end
		for _, name in ipairs(api) do
			if theirs[name] then clashes[name] = true end
		end
		assert.same({}, sorted_keys(clashes))
	end)
end)

describe("the version", function()
	local version = assert(H.read_file(H.root .. "/VERSION")):gsub("%s+$", "")

	it("is one, from VERSION: the Lua module, the C core and nfqlua --version", function()
		local nfq = require "nfq"
		assert.matches("^%d+%.%d+%.%d+$", version)
		assert.equal(version, nfq._VERSION)
		assert.equal(version, ffi.string(nfq._C.nfq_version()))
		assert.equal("nfqlua " .. version .. "\n", H.sh(H.root .. "/nfqlua --version"))
		assert.equal("nfqlua " .. version .. "\n", H.sh(H.nfqlua .. " --version"))
	end)

	it("of a rockspec is scm or VERSION", function()
		for _, path in ipairs(files("rockspecs/*.rockspec")) do
			local v = assert(H.read_file(H.root .. "/" .. path):match('\nversion = "([^"]+)"'), path)
			assert.is_truthy(v:match("^scm%-%d+$") or v:match("^(.+)%-%d+$") == version, path .. ": " .. v)
			assert.equal("rockspecs/nfq-" .. v .. ".rockspec", path)
		end
	end)

	local function require_nfq_with_core(core_c)
		local dir = H.sh("mktemp -d"):gsub("%s+$", "")
		finally(function() os.execute("rm -rf " .. dir) end)
		H.sh(("mkdir %s/nfq && cd %s && cc -shared -fPIC -Isrc %s -o %s/nfq/core.so")
			:format(dir, H.root, core_c, dir))
		local out = H.sh(("cd %s && LUA_PATH='lua/?.lua;;' LUA_CPATH='%s/?.so' luajit -e "
			.. "'print(select(2, pcall(require, \"nfq\")))'"):format(H.root, dir))
		return out, dir .. "/nfq/core.so"
	end

	it("of the C core must be the Lua module's: require \"nfq\" says which are found, and the fix", function()
		local out, path = require_nfq_with_core([[-DNFQ_VERSION='"0.0.9"' src/nfq_version.c]])
		assert.equal(("nfq %s (lua/nfq.lua) needs the C core of the same version, but nfq/core.so at %s is 0.0.9: "
			.. "rebuild with make, or fix LUA_CPATH\n"):format(version, path), out)
	end)

	it("missing from an older C core is refused the same way", function()
		local out, path = require_nfq_with_core("-x c /dev/null")
		assert.equal(("nfq %s (lua/nfq.lua) needs the C core of the same version, but nfq/core.so at %s is older "
			.. "(it has no nfq_version): rebuild with make, or fix LUA_CPATH\n"):format(version, path), out)
	end)
end)

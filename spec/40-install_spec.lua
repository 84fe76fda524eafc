-- make install into a DESTDIR: the installed daemon and module work, and
-- make uninstall removes exactly what install added.
local H = require "helpers.net"

describe("make install", function()
	it("installs a working daemon, module, man page and examples, and uninstalls them", function()
		local dest = H.sh("mktemp -d"):gsub("%s+$", "")
		finally(function() os.execute("rm -rf " .. dest) end)
		local make = ("make -s -C %s DESTDIR=%s PREFIX=/opt/nfq "):format(H.root, dest)
		H.sh(make .. "install")
		local p = dest .. "/opt/nfq"
		assert.matches("^nfqlua %d", H.sh(p .. "/bin/nfqlua --version"))
		local example = p .. "/share/doc/nfqlua/examples/port_firewall.lua"
		assert.matches(": ok", H.sh(p .. "/bin/nfqlua " .. example .. " --check"))
		local out = H.sh(("cd / && LUA_PATH='%s/share/lua/5.1/?.lua;;' LUA_CPATH='%s/lib/lua/5.1/?.so;;' luajit -e "
			.. "'local nfq = require \"nfq\"; print(nfq._VERSION, package.searchpath(\"nfq.core\", package.cpath))'")
			:format(p, p))
		assert.matches("^%d+%.%d+%.%d+\t" .. p:gsub("%p", "%%%0") .. "/lib/lua/5.1/nfq/core.so", out)
		local man = H.sh("MANWIDTH=200 man -l " .. p .. "/share/man/man1/nfqlua.1")
		assert.matches("^NFQLUA", man)
		-- Its examples are where this PREFIX put them.
		assert.matches("nfqlua /opt/nfq/share/doc/nfqlua/examples/dns_filter.lua --queue 1", man, 1, true)
		assert.is_nil(man:find("/usr/local", 1, true))
		assert.truthy(H.read_file(p .. "/share/doc/nfqlua/examples/dns_filter.lua"))
		H.sh(make .. "uninstall")
		assert.equal("", H.sh("find " .. dest .. " -type f"))
	end)

	it("luarocks make builds the rockspec into a tree where require \"nfq\" and nfqlua work, and removes it", function()
		local tmp = H.sh("mktemp -d"):gsub("%s+$", "")
		finally(function() os.execute("rm -rf " .. tmp) end)
		local src, tree = tmp .. "/src", tmp .. "/tree"
		H.sh(("mkdir %s && tar -C %s --exclude=./build --exclude=./.git -cf - . | tar -xf - -C %s && make -s -C %s clean")
			:format(src, H.root, src, src))
		local luarocks = ("cd %s && luarocks --lua-version 5.1 --tree %s "):format(src, tree)
		assert.matches("nfq scm%-1 is now installed", H.sh(luarocks .. "make rockspecs/nfq-scm-1.rockspec"))
		local out = H.sh(("cd / && eval \"$(%s path)\" && luajit -e "
			.. "'local nfq = require \"nfq\"; print(nfq._VERSION, package.searchpath(\"nfq.core\", package.cpath))'"
			.. " && %s/bin/nfqlua --version"):format(luarocks, tree))
		local t = tree:gsub("%p", "%%%0")
		assert.matches("^%d+%.%d+%.%d+\t" .. t .. "/lib/lua/5%.1/nfq/core%.so\nnfqlua %d", out)
		-- Only Lua modules and the daemon leave the rock's own directory.
		local deployed = H.sh(("find %s -type f ! -path '*/lib/luarocks/*' | sed 's#^%s/##' | sort"):format(tree, tree))
		assert.equal(table.concat({ "bin/nfqlua", "lib/lua/5.1/nfq/core.so", "share/lua/5.1/nfq.lua",
			"share/lua/5.1/nfq/cdef.lua", "share/lua/5.1/nfq/engine.lua", "share/lua/5.1/nfq/geneva.lua",
			"share/lua/5.1/nfq/headers.lua",
			"share/lua/5.1/nfq/offline.lua", "share/lua/5.1/nfq/testing.lua" }, "\n") .. "\n", deployed)
		H.sh(luarocks .. "remove nfq")
		assert.equal("", H.sh(("find %s -type f ! -path '*/lib/luarocks/*'"):format(tree)))
	end)
end)

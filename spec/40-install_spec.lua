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
		local out = H.sh(("cd / && LUA_PATH='%s/share/lua/5.1/?.lua;;' LUA_CPATH='%s/lib/lua/5.1/?.so;;' luajit -e 'local nfq = require \"nfq\"; print(nfq._VERSION, package.searchpath(\"nfq.core\", package.cpath))'"):format(p, p))
		assert.matches("^%d+%.%d+%.%d+\t" .. p:gsub("%p", "%%%0") .. "/lib/lua/5.1/nfq/core.so", out)
		assert.matches("NFQLUA", H.sh("MANWIDTH=80 man -l " .. p .. "/share/man/man1/nfqlua.1 | head -1"))
		H.sh(make .. "uninstall")
		assert.equal("", H.sh("find " .. dest .. " -type f"))
	end)
end)

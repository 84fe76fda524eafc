-- make deb: the Debian packages build with Debian's tools (lintian finds no
-- error), install with apt-get on this machine, work from where they put
-- their files (the daemon, require "nfq" in a plain luajit, an installed
-- example on real packets), and purge without leaving a file behind.
local H = require "helpers.net"

local PACKAGES = { "nfqlua", "lua-nfq", "libnfqlua-dev" }
local APT = "DEBIAN_FRONTEND=noninteractive apt-get -y -q "

local function purge()
	os.execute(APT .. "remove --purge " .. table.concat(PACKAGES, " ") .. " >/dev/null 2>&1")
end

local function installed(package)
	local f = io.popen("dpkg-query -W -f='${Status}' " .. package .. " 2>/dev/null")
	local status = f:read("*a")
	f:close()
	return status:find("install ok installed", 1, true) ~= nil
end

describe("make deb #kernel", function()
	H.isolated_tests()

	it("builds nfqlua, lua-nfq and libnfqlua-dev, which install, run and purge cleanly", function()
		local version = assert(H.read_file(H.root .. "/VERSION")):match("%S+")
		local arch = H.sh("dpkg --print-architecture"):match("%S+")
		local triplet = H.sh("dpkg-architecture -qDEB_HOST_MULTIARCH"):match("%S+")
		local out = H.sh(("make -s -C %s deb"):format(H.root))
		assert.is_nil(out:find("\n[EW]: "), "lintian:\n" .. out)
		assert.equal(("libnfqlua-dev_%s_%s.deb\nlua-nfq_%s_%s.deb\nnfqlua_%s_%s.deb\n")
			:format(version, arch, version, arch, version, arch), H.sh("cd " .. H.root .. "/build/deb && ls *.deb"))

		purge()
		finally(purge)
		H.sh("cd " .. H.root .. " && " .. APT .. "install ./build/deb/*.deb")
		local files = {}
		for _, package in ipairs(PACKAGES) do
			assert.is_true(installed(package), package)
			local list = H.sh("dpkg -L " .. package .. ' | while read -r f; do if [ -f "$f" ]; then echo "$f"; fi; done')
			for path in list:gmatch("[^\n]+") do files[#files + 1] = path end
		end
		local listed = {}
		for _, path in ipairs(files) do listed[path] = true end
		for _, path in ipairs { "/usr/bin/nfqlua", "/usr/share/man/man1/nfqlua.1.gz",
			"/lib/systemd/system/nfqlua@.service", "/usr/share/doc/nfqlua/examples/record_drops.lua",
			"/usr/share/lua/5.1/nfq.lua", "/usr/share/lua/5.1/nfq/pcap.lua", "/usr/share/lua/5.1/nfq/testing.lua",
			"/usr/lib/" .. triplet .. "/lua/5.1/nfq/core.so", "/usr/lib/" .. triplet .. "/libnfqlua.a",
			"/usr/include/nfq_engine.h", "/usr/include/nfq_core.h" } do
			assert.is_true(listed[path], path)
		end

		assert.equal("nfqlua " .. version .. "\n", H.sh("/usr/bin/nfqlua --version"))
		assert.matches("ExecStart=/usr/bin/nfqlua /etc/nfqlua/%i.lua --queue %i",
			H.read_file("/lib/systemd/system/nfqlua@.service"), 1, true)
		local man = H.sh("MANWIDTH=200 man nfqlua")
		assert.matches("/usr/share/doc/nfqlua/examples/dns_filter.lua", man, 1, true)
		-- A plain luajit, outside the checkout, on Debian's own paths.
		local lua = H.sh("cd /tmp && env -u LUA_PATH -u LUA_CPATH luajit -e 'local nfq = require \"nfq\"; "
			.. "print(nfq._VERSION, package.searchpath(\"nfq\", package.path), "
			.. "package.searchpath(\"nfq.core\", package.cpath))'")
		local shadowed = H.read_file("/usr/local/share/lua/5.1/nfq.lua") -- a make install to /usr/local comes first
		if not shadowed then
			assert.equal(("%s\t/usr/share/lua/5.1/nfq.lua\t/usr/lib/%s/lua/5.1/nfq/core.so\n"):format(version, triplet), lua)
		end

		-- The installed daemon runs an installed example on real packets.
		local dir = H.sh("mktemp -d"):gsub("%s+$", "")
		finally(function() os.execute("rm -rf '" .. dir .. "'") end)
		H.sh("iptables -A OUTPUT -o lo -p udp -j NFQUEUE --queue-num 1")
		local nfqlua = H.nfqlua
		H.nfqlua = "/usr/bin/nfqlua"
		local ok, d = pcall(H.daemon, "/usr/share/doc/nfqlua/examples/record_drops.lua --queue 1",
			("NFQ_DROP_PORTS=7411 NFQ_RECORD=%s/drops.pcap"):format(dir))
		H.nfqlua = nfqlua
		assert(ok, d)
		H.wait_queue_ready(1)
		local receiver, sender = H.udp("127.0.0.1", 7412), H.udp()
		for i = 1, 20 do
			sender:sendto(("blocked %d"):format(i), "127.0.0.1", 7411)
			sender:sendto(("passed %d"):format(i), "127.0.0.1", 7412)
		end
		sender:close()
		assert.equal(20, #receiver:recv_all(0.5))
		d:signal("TERM")
		assert.equal(0, d:wait(20))
		assert.matches("record_drops: 20 dropped packets recorded", d:output(), 1, true)
		assert.equal("20", H.sh(("tcpdump -r %s/drops.pcap -n 2>/dev/null | wc -l"):format(dir)):match("%d+"))

		purge()
		for _, package in ipairs(PACKAGES) do
			assert.is_false(installed(package), package)
		end
		local left = {}
		for _, path in ipairs(files) do
			if H.read_file(path) then left[#left + 1] = path end
		end
		assert.same({}, left)
	end)
end)

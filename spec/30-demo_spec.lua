-- `make demo` itself: it must show each packet and leave nothing behind.
local H = require "helpers.net"

describe("make demo #kernel", function()
	it("filters real traffic in a private namespace and cleans up", function()
		local out = H.sh("cd " .. H.root .. " && make -s demo")
		for i = 1, 3 do
			assert.matches("#" .. i .. " OUTPUT +UDP packet, 36 bytes", out)
		end
		assert.matches("#4 OUTPUT +UDP packet, 58 bytes", out)
		assert.matches("#5 OUTPUT +TCP packet", out)
		assert.matches("received=5 accepted=5", out, 1, true)
		assert.is_nil(H.sh("ip netns list"):find("nfqlua-demo", 1, true))
		assert.equal("", H.sh("pgrep -f '[p]rint_and_accept.lua --queue 1' || true"))
	end)
end)

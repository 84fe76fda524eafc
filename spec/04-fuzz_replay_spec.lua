-- The fuzz corpus (spec/fuzz/corpus), replayed through the C parsers and the
-- Lua header views: every input that ever found a bug stays a regression test.
local H = require "helpers.net"

describe("fuzz corpus replay", function()
	for _, target in ipairs { "packet", "headers", "build" } do
		it("runs every " .. target .. " input without a crash", function()
			local files = H.sh(("ls %s/spec/fuzz/corpus/%s | wc -l"):format(H.root, target))
			local out = H.sh(("cd %s && build/replay_%s spec/fuzz/corpus/%s/*"):format(H.root, target, target))
			assert.equal(tonumber(files), tonumber(out:match("replayed (%d+) inputs")))
			assert.is_true(tonumber(files) > 0)
		end)
	end
end)

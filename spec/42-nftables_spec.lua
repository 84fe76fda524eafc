-- The README's nftables rule sets (```nft blocks, for `nft -f`). This kernel
-- has no nft `queue` statement (KERNEL-NOTES), so a `queue` cannot run here:
-- the kernel must accept each set up to its `queue` statements (nft parses the
-- whole file; the only errors are the missing queue expression's), and the
-- set with every `queue` statement replaced by a `counter` must load and list
-- back. Sets without `queue` (the mark rules) are loaded as they are. The
-- bypass set runs with a stand-in for a bypass verdict in place of `queue`.
local H = require "helpers.net"

local function nft_blocks()
	local blocks = {}
	local text = assert(H.read_file(H.root .. "/README.md"))
	local line = 1
	for before, body in text:gmatch("()```nft\n(.-)```") do
		local _, lines = text:sub(1, before):gsub("\n", "")
		local marker = text:sub(1, before - 1):match("<!%-%- check: ([%w-]+) %-%->\n$")
		blocks[#blocks + 1] = { line = line + lines, text = body, check = marker }
	end
	return blocks
end

local function nft_file(text)
	return H.tmpfile(text, ".nft")
end

--- `nft -c -f` of text: its exit status and output.
local function nft_check(text)
	local path = nft_file(text)
	local f = io.popen("nft -c -f " .. path .. " 2>&1; echo \"::rc=$?\"")
	local out = f:read("*a")
	f:close()
	os.remove(path)
	local body, rc = out:match("^(.-)::rc=(%d+)%s*$")
	return tonumber(rc), body
end

describe("README nftables rules", function()
	H.isolated_tests()
	local blocks = nft_blocks()

	it("are there: queue, bypass and fanout, the send mark, the bypass marks", function()
		local all = {}
		for _, b in ipairs(blocks) do all[#all + 1] = b.text end
		all = table.concat(all, "\n")
		assert.is_true(#blocks >= 4)
		assert.matches("queue num %d+ bypass", all)
		assert.matches("queue num %d+%-%d+ fanout", all)
		assert.matches("meta mark & 0x1 == 0x1", all, 1, true)
		assert.matches("ct mark", all, 1, true)
	end)

	it("for bypass keep a connection out of the queue once its packet has the bypass bit", function()
		local set
		for _, b in ipairs(blocks) do
			if b.check == "nft-bypass" then set = b.text end
		end
		assert.truthy(set, "no ```nft block marked <!-- check: nft-bypass -->")
		-- What a script's pkt:bypass() does to every packet it sees.
		local path = nft_file((set:gsub("queue num 1\n", "meta mark set meta mark | 0x40000000\n")))
		H.sh("nft -f " .. path)
		os.remove(path)
		local server = H.tcp_listen("127.0.0.1", 7171)
		local client = H.tcp_connect("127.0.0.1", 7171)
		local conn = assert(server:accept(2))
		for _ = 1, 5 do
			client:send("ping")
			assert.equal("ping", conn:recv(2))
		end
		client:close(); conn:close(); server:close()
		-- Each hook's accept rule: input and output both see loopback.
		local accepted = {}
		local rule = "chain (%w+) {[^}]-ct mark & 0x40000000 == 0x40000000 counter packets (%d+)"
		for chain, n in H.sh("nft list ruleset"):gmatch(rule) do
			accepted[chain] = tonumber(n)
		end
		assert.is_true(accepted.input >= 5, "input accepted " .. tostring(accepted.input))
		assert.is_true(accepted.output >= 5, "output accepted " .. tostring(accepted.output))
		assert.equal(0, accepted.forward)
	end)

	for _, b in ipairs(blocks) do
		it("at README.md:" .. b.line .. " parse, and load with counters for the queue statements", function()
			local has_queue = b.text:find("%squeue ") ~= nil
			local rc, out = nft_check(b.text)
			if has_queue then
				-- Every error is the kernel's refusal of the queue expression.
				local errors, queue_errors = 0, 0
				for err in out:gmatch("Error: [^\n]*\n[^\n]*\n[^\n]*") do
					errors = errors + 1
					local msg, rule, marks = err:match("Error: ([^\n]*)\n([^\n]*)\n([^\n]*)")
					local from, to = marks:find("%^+")
					if msg == "Could not process rule: No such file or directory"
						and rule:sub(from, to) == "queue" then
						queue_errors = queue_errors + 1
					end
				end
				assert.is_true(errors > 0, out)
				assert.equal(errors, queue_errors, out)
			else
				assert.equal(0, rc, out)
			end
			local runnable = b.text:gsub("queue num [%d%-]+[%a ]-\n", "counter\n")
			local path = nft_file(runnable)
			H.sh("nft -f " .. path)
			os.remove(path)
			assert.matches("table ", H.sh("nft list ruleset"))
		end)
	end
end)

-- The event-loop examples, run as programs under plain LuaJIT: a luv or
-- cqueues loop polls q:get_fd() and calls q:run(false) beside a timer and
-- signal handlers, and filters real traffic.
local H = require "helpers.net"

local QUEUE, OPEN_PORT, DROP_PORT = 7, 8101, 8102

-- As README tells users: the checkout's nfq first, then the default paths
-- (';;'), where Debian installs luv and cqueues.
local ENV = ("LUA_PATH=\"%s/lua/?.lua;;\" LUA_CPATH=\"%s/lua/?.so;;\" NFQ_DROP_PORT=%d"):format(
	H.root, H.root, DROP_PORT)

local function last_line(s)
	return s:match("([^\n]*)\n?$")
end

local Program = {}
Program.__index = Program

--- Start `luajit scripts/examples/NAME QUEUE` in the background; its stdout
-- and stderr go to one log file.
local function start(name)
	local dir = H.sh("mktemp -d"):gsub("%s+$", "")
	local p = setmetatable({ name = name, dir = dir, log = dir .. "/log", rc_file = dir .. "/rc" }, Program)
	os.execute(("( sh -c 'echo $$ > %s/pid; exec env %s luajit %s/scripts/examples/%s %d' > %s 2>&1; echo $? > %s ) &")
		:format(dir, ENV, H.root, name, QUEUE, p.log, p.rc_file))
	p.pid = H.wait_for(function()
		local s = H.read_file(dir .. "/pid")
		return s and tonumber(s:match("%d+"))
	end, 5, name .. " to start")
	return p
end

function Program:output()
	return H.read_file(self.log) or ""
end

--- Wait until cond() holds; on timeout, fail with what the program printed.
function Program:wait_until(cond, what)
	if not pcall(H.wait_for, cond, 5, what) then
		error(("timed out waiting for %s; %s printed:\n%s"):format(what, self.name, self:output()), 2)
	end
end

function Program:wait_output(text)
	-- A tail call: a timeout names the spec's line.
	return self:wait_until(function() return self:output():find(text, 1, true) end, "the line " .. text)
end

function Program:signal(sig)
	os.execute(("kill -%s %d 2>/dev/null"):format(sig, self.pid))
end

--- Wait for the program to exit; its exit status.
function Program:wait()
	local rc
	self:wait_until(function()
		local s = H.read_file(self.rc_file)
		rc = s and tonumber(s:match("%d+"))
		return rc
	end, self.name .. " to exit")
	return rc
end

--- Stop the program if it still runs (SIGTERM, then SIGKILL) and remove its files.
function Program:stop()
	if not H.read_file(self.rc_file) then
		self:signal("TERM")
		if not pcall(self.wait, self) then self:signal("KILL") end
	end
	os.execute("rm -rf " .. self.dir)
end

--- Why `luajit` cannot load an event library here, or nil when it can.
local function unavailable(module)
	local ok, err = pcall(H.sh, ("env %s luajit -e 'require \"%s\"'"):format(ENV, module))
	if not ok then return (err:match("\n([^\n]*)"):gsub(":$", "")) end
end

local examples = {
	{ name = "luv_filter.lua", module = "luv", package = "lua-luv" },
	{ name = "cqueues_filter.lua", module = "cqueues", package = "lua-cqueues" },
}

for _, ex in ipairs(examples) do
	describe(ex.name .. " #kernel", function()
		local p
		before_each(function() H.fresh_netns() end)
		after_each(function()
			if p then p:stop() end
			p = nil
		end)

		local function skipped()
			local why = unavailable(ex.module)
			if why then
				pending(("%s is not installed or does not load under luajit (%s)"):format(ex.package, why))
			end
			return why
		end

		-- The program's own line after a clean stop: its unbind succeeded
		-- and every packet got the filter's verdict, none the fallback.
		local function assert_clean_exit(counts)
			assert.equal(0, p:wait())
			local out = p:output()
			assert.equal(("queue %d unbound: %s"):format(QUEUE, counts), last_line(out))
			for line in out:gmatch("[^\n]+") do
				assert.matches("^queue " .. QUEUE .. "[ :]", line)
			end
			assert.is_nil(H.queue_info(QUEUE))
		end

		it("drops UDP to one port, accepts the rest, prints counters on a timer, unbinds at SIGTERM", function()
			if skipped() then return end
			H.sh(("iptables -A OUTPUT -o lo -p udp -j NFQUEUE --queue-num %d"):format(QUEUE))
			local open, blocked, tx = H.udp("127.0.0.1", OPEN_PORT), H.udp("127.0.0.1", DROP_PORT), H.udp()
			p = start(ex.name)
			p:wait_until(function() return H.queue_info(QUEUE) end, "queue " .. QUEUE .. " to be bound")
			-- A tick before any traffic, and one after it below: the timer
			-- runs beside the poll watcher, not only when it is idle.
			p:wait_output(("queue %d: received=0 accepted=0 dropped=0 fallback=0\n"):format(QUEUE))
			for i = 1, 2 do
				tx:sendto("open" .. i, "127.0.0.1", OPEN_PORT)
				tx:sendto("blocked" .. i, "127.0.0.1", DROP_PORT)
			end
			assert.equal("open1", open:recv(2))
			assert.equal("open2", open:recv(2))
			p:wait_output(("queue %d: received=4 accepted=2 dropped=2 fallback=0\n"):format(QUEUE))
			assert.is_nil(blocked:recv(0.3))
			p:signal("TERM")
			assert_clean_exit("received=4 accepted=2 dropped=2 fallback=0")
		end)

		it("unbinds and exits 0 at SIGINT", function()
			if skipped() then return end
			p = start(ex.name)
			p:wait_until(function() return H.queue_info(QUEUE) end, "queue " .. QUEUE .. " to be bound")
			p:signal("INT")
			assert_clean_exit("received=0 accepted=0 dropped=0 fallback=0")
		end)
	end)
end

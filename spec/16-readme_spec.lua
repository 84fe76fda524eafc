-- The README as a newcomer uses it: every shell, Lua, C and nginx block is
-- either run here (or compared with the file that another spec runs), named
-- by a `<!-- check: NAME -->` line right before it, or marked
-- `<!-- illustrative: why -->`. Every Lua block compiles, and every example
-- script is in the index with the specs that run it.
local H = require "helpers.net"
local testing = require "nfq.testing"

-- The README, and the pages beside it once the reference moves there.
local function doc_files()
	local files = { "README.md" }
	for path in H.sh("cd " .. H.root .. " && ls docs/*.md 2>/dev/null || true"):gmatch("[^\n]+") do
		files[#files + 1] = path
	end
	return files
end

local CODE = { sh = true, bash = true, shell = true, lua = true, c = true, nginx = true }

--- Every fenced block: { file, line, lang, text, check, illustrative }.
local function fenced_blocks()
	local blocks = {}
	for _, file in ipairs(doc_files()) do
		local lines = {}
		for line in (assert(H.read_file(H.root .. "/" .. file)) .. "\n"):gmatch("([^\n]*)\n") do
			lines[#lines + 1] = line
		end
		local i = 1
		while i <= #lines do
			local lang = lines[i]:match("^```(%S*)")
			if lang then
				local b = { file = file, line = i, lang = lang, before = lines[i - 1] or "" }
				b.check = b.before:match("^<!%-%- check: ([%w-]+) %-%->$")
				b.illustrative = b.before:find("^<!%-%- illustrative") ~= nil
				local body = {}
				i = i + 1
				while i <= #lines and not lines[i]:find("^```") do
					body[#body + 1] = lines[i]
					i = i + 1
				end
				b.text = table.concat(body, "\n") .. "\n"
				blocks[#blocks + 1] = b
			end
			i = i + 1
		end
	end
	return blocks
end

local blocks = fenced_blocks()
local named = {}
for _, b in ipairs(blocks) do
	if b.check then named[b.check] = b end
end

local function block(name)
	return assert(named[name], "no README block marked <!-- check: " .. name .. " -->").text
end

local function where(b)
	return ("%s:%d (```%s, %q)"):format(b.file, b.line, b.lang, b.text:match("^[^\n]*"))
end

local function write(path, text)
	local f = assert(io.open(path, "w"))
	f:write(text)
	f:close()
	return path
end

local function tmpdir()
	return H.sh("mktemp -d"):gsub("%s+$", "")
end

--- A command in a session of its own, its output in a file: the session's
-- id (its process group) to signal it, even when the command runs others.
local function start(cmd, cwd, env)
	local dir = tmpdir()
	local p = { dir = dir }
	os.execute(("( cd %s && %s setsid bash -c 'echo $$ > %s/pid; exec %s' > %s/log 2>&1; echo $? > %s/rc ) &")
		:format(cwd, env or "", dir, cmd, dir, dir))
	p.pid = H.wait_for(function()
		local s = H.read_file(dir .. "/pid")
		return s and tonumber(s:match("%d+"))
	end, 5, cmd .. " to start")
	function p.log() return H.read_file(dir .. "/log") or "" end
	function p.rc()
		local s = H.read_file(dir .. "/rc")
		return s and tonumber(s:match("%d+"))
	end
	--- Signal the whole session; after a grace period, kill what is left.
	function p.stop(sig)
		os.execute(("kill -%s -%d 2>/dev/null"):format(sig or "TERM", p.pid))
		pcall(H.wait_for, function() return p.rc() and not H.queue_info(1) end, 5, cmd .. " to stop")
		os.execute(("kill -KILL -%d 2>/dev/null"):format(p.pid))
		return p.log()
	end
	return p
end

--- Send each datagram to 127.0.0.1:port, and what arrived of them at that port.
local function exchange(port, ...)
	local rx, tx = H.udp("127.0.0.1", port), H.udp()
	for _, m in ipairs({ ... }) do tx:sendto(m, "127.0.0.1", port) end
	return rx:recv_all(0.3)
end

local lua_env = ("LUA_PATH='%s/lua/?.lua;;' LUA_CPATH='%s/lua/?.so;;'"):format(H.root, H.root)

-- `expected` lines, with "..." for anything, appear in `out` in this order.
local function assert_lines_in_order(expected, out)
	local actual = {}
	for line in out:gmatch("[^\n]+") do actual[#actual + 1] = line end
	local at = 1
	for want in expected:gmatch("[^\n]+") do
		local pattern = "^" .. want:gsub("%p", "%%%0"):gsub("%%%.%%%.%%%.", ".-") .. "$"
		while at <= #actual and not actual[at]:find(pattern) do at = at + 1 end
		assert(at <= #actual, ("the line %q does not follow in the output:\n%s"):format(want, out))
		at = at + 1
	end
end

-- How each named block is checked. Those marked #kernel run as root in a
-- private network namespace.
local checks = {}

checks["drop-secret"] = function()
	local script = H.tmpfile(block("drop-secret"), ".lua")
	local r = testing.run(script, {
		testing.packet { dst = "127.0.0.1", dport = 5353, payload = "top secret" },
		testing.packet { dst = "127.0.0.1", dport = 5353, payload = "hello" },
	})
	assert.same({ "drop", "accept" }, { r.by_id[1].verdict, r.by_id[2].verdict })
end

checks["contract"] = function()
	local script = H.tmpfile(block("contract"), ".lua")
	assert.same({ 0, script .. ": ok\n" }, { H.run_nfqlua(script .. " --check") })
end

checks["header-views"] = function()
	local body = block("header-views")
	local script = H.tmpfile("return function(pkt)\n" .. body .. "end\n", ".lua")
	local printed = {}
	local print_stub = stub(_G, "print", function(...) printed[#printed + 1] = table.concat({ ... }, " ") end)
	local ok, r = pcall(testing.run, script, { testing.packet { src = "10.0.0.1", dport = 53, payload = "hello" } })
	print_stub:revert()
	assert(ok, r)
	assert.same({ "10.0.0.1 40000" }, printed)
	local rewritten = r.by_id[1].payload
	assert.matches("goodbye$", rewritten)
	-- fix_checksums made the packet the one testing.packet would build.
	assert.equal(testing.packet { src = "10.0.0.1", dport = 53, payload = "goodbye" }, rewritten)
end

checks["openresty-pattern"] = function()
	local conf = {}
	for line in assert(H.read_file(H.root .. "/scripts/examples/openresty/nginx.conf")):gmatch("[^\n]+") do
		conf[line:gsub("#.*", ""):match("^%s*(.-)%s*$")] = true
	end
	for line in block("openresty-pattern"):gmatch("[^\n]+") do
		local code = line:gsub("#.*", ""):match("^%s*(.-)%s*$")
		if code ~= "" then assert(conf[code], "not in nginx.conf: " .. code) end
	end
end

-- The blocklist's rules: spec/45-blocklist_spec.lua applies them as written.
checks["blocklist"] = function()
	local spec = assert(H.read_file(H.root .. "/spec/45-blocklist_spec.lua"))
	assert.truthy(spec:find("check: blocklist", 1, true), "spec/45 does not run the block blocklist")
end

-- The output block belongs to the quick start's check.
checks["quickstart-output"] = function() end

checks["quickstart-build"] = {
	kernel = true,
	run = function()
		-- The first block as a user with sudo would run it (here as root), its
		-- last line a shell in a new namespace that reads the second block.
		local build = block("quickstart-build"):gsub("sudo ", "")
		local second = H.tmpfile(block("quickstart"), ".sh")
		local n
		build, n = build:gsub("\nunshare %-%-net bash( *#[^\n]*)\n$", "\nunshare --net bash < " .. second .. "\n")
		assert.equal(1, n, "the first block ends with unshare --net bash")
		local out = H.sh(("cd %s && bash %s 2>&1"):format(H.root, H.tmpfile(build, ".sh")))
		assert_lines_in_order(block("quickstart-output"), out)
		assert.is_nil(out:find("nfqlua: error", 1, true), out)
	end,
}
-- Run by the check above.
checks["quickstart"] = function() end

checks["drop-secret-daemon"] = {
	kernel = true,
	run = function()
		local dir = tmpdir()
		finally(function() os.execute("rm -rf " .. dir) end)
		write(dir .. "/drop_secret.lua", block("drop-secret"))
		H.sh(("ln -s %s %s/nfqlua"):format(H.nfqlua, dir))
		local p = start("bash " .. write(dir .. "/block.sh", block("drop-secret-daemon")), dir)
		finally(function() p.stop("KILL") end)
		H.wait_queue_ready(1)
		assert.same({ "hello" }, exchange(5353, "top secret", "hello"))
		local log = p.stop()
		assert.matches("queue 1: received=2 accepted=1 dropped=1", log, 1, true)
	end,
}

checks["drop-secret-library"] = {
	kernel = true,
	run = function()
		local dir = tmpdir()
		finally(function() os.execute("rm -rf " .. dir) end)
		write(dir .. "/drop_secret.lua", block("drop-secret"))
		write(dir .. "/app.lua", block("drop-secret-library"))
		H.sh("iptables -A OUTPUT -p udp --dport 5353 -j NFQUEUE --queue-num 1")
		local p = start("luajit app.lua", dir, lua_env)
		finally(function() p.stop("KILL") end)
		H.wait_queue_ready(1)
		assert.same({ "hello" }, exchange(5353, "top secret", "hello"))
		-- SIGTERM ends it (the shell around it says "Terminated"), with nothing else to say.
		assert.matches("^%s*Terminated%s*$", p.stop())
	end,
}

checks["luv"] = {
	kernel = true,
	run = function()
		local app = H.tmpfile(block("luv"), ".lua")
		H.sh("iptables -A OUTPUT -o lo -p udp -j NFQUEUE --queue-num 1")
		local p = start("luajit " .. app, H.root, lua_env)
		finally(function() p.stop("KILL") end)
		H.wait_queue_ready(1)
		assert.same({}, exchange(5555, "dropped"))
		assert.same({ "passed" }, exchange(5556, "passed"))
		os.execute("kill -TERM " .. p.pid)
		assert.equal(0, H.wait_for(p.rc, 5, "the luv program to stop at SIGTERM"))
		assert.is_nil(H.queue_info(1), "it unbound the queue")
		assert.equal("", p.log())
	end,
}

checks["luv-example"] = {
	kernel = true,
	run = function()
		H.sh("iptables -A OUTPUT -o lo -p udp -j NFQUEUE --queue-num 1")
		local p = start("bash " .. H.tmpfile(block("luv-example"), ".sh"), H.root)
		finally(function() p.stop("KILL") end)
		H.wait_queue_ready(1)
		assert.same({}, exchange(5555, "dropped"))
		assert.same({ "passed" }, exchange(5556, "passed"))
		assert.matches("queue 1 unbound: received=2 accepted=1 dropped=1 fallback=0", p.stop(), 1, true)
	end,
}

checks["busted"] = {
	kernel = false,
	run = function()
		local text = block("busted")
		local command = "LUA_PATH='lua/?.lua;;' LUA_CPATH='lua/?.so;;' busted --lua=luajit port_firewall_spec.lua"
		assert.matches("-- " .. command, text, 1, true)
		local dir = tmpdir()
		finally(function() os.execute("rm -rf " .. dir) end)
		local spec = write(dir .. "/port_firewall_spec.lua", text)
		local out = H.sh(("cd %s && %s"):format(H.root, command:gsub("port_firewall_spec%.lua$", spec)))
		assert.matches("1 success / 0 failures / 0 errors", out, 1, true)
	end,
}

checks["openresty"] = {
	kernel = true,
	run = function()
		for _, path in ipairs { "/usr/sbin/nginx", "/usr/lib/nginx/modules/ngx_http_lua_module.so", "/usr/bin/curl" } do
			if not os.rename(path, path) then
				pending(path .. " is not installed (make deps; curl)")
				return
			end
		end
		-- /srv is a fresh tmpfs in a mount namespace of the block's own. If
		-- the block fails, nginx is told to stop all the same.
		local wrapper = H.tmpfile(([[
mount -t tmpfs nfq-readme /srv || exit 1
cd %s
bash -e %s && exit 0
nginx -p /srv/nfq-nginx/ -c nginx.conf -s quit
exit 1
]]):format(H.root, H.tmpfile(block("openresty"), ".sh")), ".sh")
		local dir = tmpdir()
		finally(function() os.execute("rm -rf " .. dir) end)
		-- A file, not a pipe, for the output: nginx keeps its stderr open.
		os.execute(("unshare -m bash %s > %s/log 2>&1; echo $? > %s/rc"):format(wrapper, dir, dir))
		local out = H.read_file(dir .. "/log")
		-- The master, by the pid in its log: it must be gone soon (or is killed, with its workers).
		local master = tonumber(out:match("(%d+)#%d+: start worker processes"))
		if master then
			local gone = pcall(H.wait_for, function() return not H.read_file("/proc/" .. master .. "/stat") end, 10)
			if not gone then os.execute(("pkill -KILL -P %d; kill -KILL %d"):format(master, master)) end
			assert.is_true(gone, "nginx (pid " .. master .. ") did not stop:\n" .. out)
		end
		assert.equal("0\n", H.read_file(dir .. "/rc"), out)
		assert_lines_in_order(table.concat({ "blocked 5555", "sent 1 to 127.0.0.1:5555: \"hello\"", "received 0: ",
			"sent 1 to 127.0.0.1:5556: \"hello\"", "received 1: \"hello\"", '{"queue":3,...,"dropped":1,...,"received":2,...}',
			"...nfq_filter: queue 3 unbound, the worker is exiting..." }, "\n"), out)
		for _, level in ipairs { "[error]", "[alert]", "[emerg]", "[crit]" } do
			assert.is_nil(out:find(level, 1, true), out)
		end
		assert.equal("", H.sh("iptables -S INPUT | grep NFQUEUE || true"), "the block removes its rule")
		assert.is_nil(H.queue_info(3))
	end,
}

-- The bypass rule sets: spec/34-bypass_spec.lua runs each under a TCP transfer.
for _, name in ipairs { "bypass-input", "bypass-output", "bypass-forward" } do
	checks[name] = function()
		local spec = assert(H.read_file(H.root .. "/spec/34-bypass_spec.lua"))
		assert.truthy(spec:find('"' .. name .. '"', 1, true), "spec/34 does not run the block " .. name)
	end
end

-- The nftables bypass set: spec/42-nftables_spec.lua runs it.
checks["nft-bypass"] = function()
	local spec = assert(H.read_file(H.root .. "/spec/42-nftables_spec.lua"))
	assert.truthy(spec:find("nft-bypass", 1, true), "spec/42 does not run the block nft-bypass")
end

describe("README blocks", function()
	it("are each run by a check here or marked illustrative", function()
		local unmarked, unknown, used = {}, {}, {}
		for _, b in ipairs(blocks) do
			if b.check then
				if not checks[b.check] then unknown[#unknown + 1] = where(b) .. ": no check named " .. b.check end
				if used[b.check] then unknown[#unknown + 1] = where(b) .. ": check " .. b.check .. " used twice" end
				used[b.check] = true
			elseif CODE[b.lang] and not b.illustrative then
				unmarked[#unmarked + 1] = where(b)
			end
		end
		assert.same({}, unknown)
		assert.same({}, unmarked, "mark each with <!-- check: NAME --> and add the check to spec/16-readme_spec.lua, "
			.. "or with <!-- illustrative: why --> on the line before the block")
		local unused = {}
		for name in pairs(checks) do
			if not used[name] then unused[#unused + 1] = name end
		end
		table.sort(unused)
		assert.same({}, unused, "checks whose block is gone")
	end)

	it("have Lua that compiles", function()
		for _, b in ipairs(blocks) do
			if b.lang == "lua" then
				local fn, err = loadstring(b.text, "=" .. where(b))
				assert(fn, err)
			end
		end
	end)

	for name, check in pairs(checks) do
		if type(check) == "function" then
			it("work as written: " .. name, check)
		elseif not check.kernel then
			it("work as written: " .. name, check.run)
		end
	end
end)

describe("README blocks #kernel", function()
	before_each(function()
		H.fresh_netns()
	end)

	for name, check in pairs(checks) do
		if type(check) == "table" and check.kernel then
			it("work as written: " .. name, check.run)
		end
	end
end)

describe("README index of scripts/examples", function()
	local readme = assert(H.read_file(H.root .. "/README.md"))
	local index = assert(readme:match("\n## The example scripts\n(.-)\n## "), "the section ## The example scripts")

	it("lists every example", function()
		local missing = {}
		for path in H.sh("cd " .. H.root .. "/scripts/examples && find . -type f | sort"):gmatch("%./([^\n]+)") do
			if not index:find("`" .. path .. "`", 1, true) then missing[#missing + 1] = path end
		end
		assert.same({}, missing)
	end)

	it("names specs that run each example", function()
		local wrong, rows = {}, 0
		for row in index:gmatch("\n(| `[^\n]+)") do
			rows = rows + 1
			local names = {}
			for path in row:match("^| ([^|]+)|"):gmatch("`([^`]+)`") do names[#names + 1] = path:match("[^/]+$") end
			local specs = row:match("| ([^|]*) |$")
			assert.truthy(specs and specs:find("spec/%d%d"), "a row without specs: " .. row)
			for num in specs:gmatch("spec/(%d%d)") do
				local spec = H.sh(("ls %s/spec/%s-*_spec.lua"):format(H.root, num)):gsub("%s+$", "")
				local text = assert(H.read_file(spec))
				for _, name in ipairs(names) do
					if not text:find(name, 1, true) then wrong[#wrong + 1] = spec .. " does not run " .. name end
				end
			end
		end
		assert.is_true(rows >= 14, "rows: " .. rows)
		assert.same({}, wrong)
	end)
end)

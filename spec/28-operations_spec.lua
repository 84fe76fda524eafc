-- Operating the daemon: giving up root (--user), the pidfile, refusing scripts
-- others can change, syslog (--syslog) and the rate limit on per-packet error
-- lines.
local ffi = require "ffi"
local H = require "helpers.net"

if not pcall(ffi.typeof, "struct nfq_test_sockaddr_un") then
	ffi.cdef [[
	struct nfq_test_sockaddr_un { uint16_t family; char path[108]; };
	int chmod(const char *path, unsigned mode);
	]]
end
local C = ffi.C
local AF_UNIX, SOCK_DGRAM, MSG_DONTWAIT = 1, 2, 0x40
local CAP_NET_ADMIN_MASK = 0x1000 -- bit 12

local function status_fields(path)
	local fields = {}
	for line in io.lines(path) do
		local k, v = line:match("^(%w+):%s*(.-)%s*$")
		if k then fields[k] = v end
	end
	return fields
end

describe("nfqlua --user #kernel", function()
	local d
	H.isolated_tests()

	it("runs every thread as the user with CAP_NET_ADMIN only, and still filters", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 6301 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 6301), H.udp()
		-- The checkout may sit where nobody cannot read (a mktemp -d clone).
		local dir = H.sh("mktemp -d"):gsub("%s+$", "")
		finally(function() os.execute("rm -rf " .. dir) end)
		H.sh(("chmod 755 %s && cp %s/scripts/examples/drop_word.lua %s/"):format(dir, H.root, dir))
		d = H.daemon(dir .. "/drop_word.lua --queue 1 --user nobody --script-timeout 1000 --max-len 4")
		d:wait_output("bound")
		H.wait_queue_ready(1)
		assert.matches("running as user nobody", d:output(), 1, true)
		local nobody = H.sh("id -u nobody"):match("%d+")
		local tasks = 0
		for task in H.sh("ls /proc/" .. d.pid .. "/task"):gmatch("%d+") do
			local st = status_fields(("/proc/%d/task/%s/status"):format(d.pid, task))
			assert.equal(("%s\t%s\t%s\t%s"):format(nobody, nobody, nobody, nobody), st.Uid)
			for _, set in ipairs { "CapEff", "CapPrm", "CapBnd" } do
				assert.equal(CAP_NET_ADMIN_MASK, tonumber(st[set], 16), set .. " of task " .. task)
			end
			assert.equal(0, tonumber(st.CapInh, 16))
			tasks = tasks + 1
		end
		assert.is_true(tasks >= 2, "the main thread, the worker and the watchdog")
		for _, m in ipairs { "keep 1", "please DROP me", "keep 2" } do
			tx:sendto(m, "127.0.0.1", 6301)
		end
		assert.same({ "keep 1", "keep 2" }, rx:recv_all(0.5))
		d:signal("HUP")
		d:wait_output("version 2 runs now")
		tx:sendto("after reload", "127.0.0.1", 6301)
		assert.same({ "after reload" }, rx:recv_all(0.5))
		-- The kernel's counters stay readable although /proc's file is root's:
		-- stalled, the daemon's queue of 4 overflows by 6.
		d:signal("STOP")
		for i = 1, 10 do tx:sendto("stalled " .. i, "127.0.0.1", 6301) end
		H.wait_for(function() return H.queue_info(1).queue_dropped == 6 end, 5, "6 queue-full drops")
		d:signal("CONT")
		assert.equal(4, #rx:recv_all(0.5))
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.matches("received=8 accepted=7 dropped=1", d:output(), 1, true)
		assert.matches("kernel_queue_dropped=6 ", d:output(), 1, true)
	end)

	it("says what is wrong with a bad --user", function()
		local rc, out = H.run_nfqlua(H.root .. "/scripts/examples/accept_all.lua --queue 1 --user no-such-user")
		assert.equal(1, rc)
		assert.matches("^nfqlua: %-%-user: no user named 'no%-such%-user'\n$", out)
		local private = H.sh("mktemp -d"):gsub("%s+$", "")
		finally(function() os.execute("rm -rf " .. private) end)
		H.sh(("chmod 700 %s && cp %s/scripts/examples/accept_all.lua %s/"):format(private, H.root, private))
		rc, out = H.run_nfqlua(private .. "/accept_all.lua --queue 1 --user nobody")
		assert.equal(1, rc)
		assert.matches("cannot read script '" .. private:gsub("%p", "%%%0") .. "/accept_all.lua': Permission denied "
			.. "%(%-%-user nobody must be able to read it and its directories%)\n$", out)
		rc, out = H.run_nfqlua(H.root .. "/scripts/examples/accept_all.lua --queue 1 --user nobody",
			"setpriv --reuid=nobody --regid=nogroup --clear-groups ")
		assert.equal(1, rc)
		assert.matches("^nfqlua: %-%-user needs nfqlua to start as root", out)
	end)
end)

describe("nfqlua --pidfile #kernel", function()
	local dir
	H.isolated_tests()
	before_each(function()
		dir = H.sh("mktemp -d"):gsub("%s+$", "")
		H.sh("chmod 755 " .. dir .. " && cp " .. H.root .. "/scripts/examples/accept_all.lua " .. dir .. "/f.lua")
	end)
	after_each(function() os.execute("rm -rf " .. dir) end)

	local function files()
		return (H.sh("ls -A " .. dir):gsub("%s+$", ""):gsub("%s+", " "))
	end

	local function start(args)
		local d = H.daemon(dir .. "/f.lua " .. args)
		d:wait_output("bound")
		return d
	end

	it("appears once the queue is bound, survives a second start that fails, and goes at a clean stop", function()
		local pidfile = dir .. "/nfqlua.pid"
		local d = start("--queue 1 --pidfile " .. pidfile)
		H.wait_for(function() return H.read_file(pidfile) end, 5, "the pidfile")
		assert.equal(d.pid .. "\n", H.read_file(pidfile))
		local rc, out = H.run_nfqlua(dir .. "/f.lua --queue 1 --pidfile " .. pidfile)
		assert.equal(1, rc)
		assert.matches("^nfqlua: queue 1 is already bound by another socket", out)
		assert.equal(d.pid .. "\n", H.read_file(pidfile), "the running daemon's pidfile stays")
		assert.equal("f.lua nfqlua.pid", files(), "and nothing else is left behind")
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.equal("f.lua", files())
	end)

	it("replaces a symlink at its path instead of writing through it", function()
		local target = dir .. "/target"
		H.sh(("echo precious > %s && ln -s %s %s/nfqlua.pid"):format(target, target, dir))
		local d = start("--queue 1 --pidfile " .. dir .. "/nfqlua.pid")
		H.wait_for(function() return H.read_file(dir .. "/nfqlua.pid") ~= "precious\n" end, 5, "the pidfile")
		assert.equal("", H.sh("find " .. dir .. " -type l"), "the link is gone")
		assert.equal(d.pid .. "\n", H.read_file(dir .. "/nfqlua.pid"))
		assert.equal("precious\n", H.read_file(target))
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.equal("f.lua target", files())
		assert.equal("precious\n", H.read_file(target))
	end)

	it("is not removed at stop when another program has replaced it", function()
		local pidfile = dir .. "/nfqlua.pid"
		local d = start("--queue 1 --pidfile " .. pidfile)
		H.wait_for(function() return H.read_file(pidfile) end, 5, "the pidfile")
		H.sh(("echo 4242 > %s/new && mv %s/new %s"):format(dir, dir, pidfile))
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.equal("4242\n", H.read_file(pidfile))
	end)

	it("is written as the --user, who must be able to create it in its directory", function()
		local rc, out = H.run_nfqlua(dir .. "/f.lua --queue 1 --user nobody --pidfile " .. dir .. "/nfqlua.pid",
			"timeout 10 ")
		assert.equal(1, rc)
		assert.equal(("nfqlua: cannot write pidfile '%s/nfqlua.pid': Permission denied (--user nobody must be able"
			.. " to create files in its directory)\n"):format(dir), out:gsub("^nfqlua: info: running as user[^\n]*\n", ""))
		assert.is_nil(H.queue_info(1), "it stopped before binding")
		H.sh("mkdir " .. dir .. "/run && chown nobody " .. dir .. "/run")
		local pidfile = dir .. "/run/nfqlua.pid"
		local d = start("--queue 1 --user nobody --pidfile " .. pidfile)
		H.wait_for(function() return H.read_file(pidfile) end, 5, "the pidfile")
		assert.equal(d.pid .. "\n", H.read_file(pidfile))
		assert.equal("nobody", H.sh("stat -c %U " .. pidfile):gsub("%s+$", ""))
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.is_nil(H.read_file(pidfile))
	end)
end)

describe("scripts run as root", function()
	local dir
	before_each(function()
		dir = H.sh("mktemp -d"):gsub("%s+$", "")
		H.sh("chmod 755 " .. dir .. " && cp " .. H.root .. "/scripts/examples/accept_all.lua " .. dir .. "/f.lua")
	end)
	after_each(function() os.execute("rm -rf " .. dir) end)

	local function check(prefix)
		return H.run_nfqlua(dir .. "/f.lua --check", prefix)
	end

	it("are refused when someone else could change them, with the fix", function()
		local script = dir .. "/f.lua"
		assert.equal(0, (check()))
		H.sh("chmod 666 " .. script)
		local rc, out = check()
		assert.equal(1, rc)
		assert.equal(("nfqlua: refusing to run '%s' as root: it is writable by others (mode 0666); chmod go-w '%s'\n")
			:format(script, script), out)
		H.sh("chmod 664 " .. script)
		rc, out = check()
		assert.equal(1, rc)
		assert.matches("it is writable by its group (mode 0664)", out, 1, true)
		H.sh("chmod 644 " .. script .. " && chown nobody " .. script)
		rc, out = check()
		assert.equal(1, rc)
		assert.matches("it belongs to uid %d+, who could change it; chown root", out)
		H.sh("chown root " .. script .. " && chmod 777 " .. dir)
		rc, out = check()
		assert.equal(1, rc)
		assert.matches("its directory '" .. dir:gsub("%p", "%%%0") .. "' is writable by others", out)
		-- A sticky directory such as /tmp is fine: others cannot replace the file.
		H.sh("chmod 1777 " .. dir)
		assert.equal(0, (check()))
	end)

	it("are also refused on reload, and the running version stays", function()
		H.fresh_netns()
		local script = dir .. "/f.lua"
		local d = H.daemon(script .. " --queue 1")
		finally(function() d:stop() end)
		d:wait_output("bound")
		H.sh("chmod 646 " .. script)
		d:signal("HUP")
		d:wait_output("reload of " .. script .. " failed, version 1 keeps running: refusing to run")
		H.sh("chmod 644 " .. script)
		d:signal("HUP")
		d:wait_output("version 2 runs now")
	end)

	it("are not checked for a user that owns them once --user gave up root", function()
		H.sh("chown nobody " .. dir .. "/f.lua")
		local rc, out = H.run_nfqlua(dir .. "/f.lua --check --user nobody")
		assert.equal(0, rc, out)
		assert.matches("f.lua: ok", out, 1, true)
	end)
end)

describe("nfqlua logging #kernel", function()
	local dir, sock
	before_each(function()
		H.fresh_netns()
		dir = H.sh("mktemp -d"):gsub("%s+$", "")
		H.sh("mkdir " .. dir .. "/dev && touch " .. dir .. "/dev/null")
	end)
	after_each(function()
		if sock then C.close(sock) end
		sock = nil
		os.execute("rm -rf " .. dir)
	end)

	-- A syslog daemon of our own: a datagram socket that becomes /dev/log
	-- for the daemon only, in a private mount namespace. It reads only at the
	-- end, so its queue must hold every line (syslog(3) blocks when full).
	local function fake_syslog()
		H.sh("sysctl -qw net.unix.max_dgram_qlen=1000")
		sock = C.socket(AF_UNIX, SOCK_DGRAM, 0)
		assert(sock >= 0)
		local addr = ffi.new("struct nfq_test_sockaddr_un")
		addr.family = AF_UNIX
		ffi.copy(addr.path, dir .. "/dev/log")
		assert.equal(0, C.bind(sock, addr, ffi.sizeof(addr)))
		C.chmod(dir .. "/dev/log", tonumber("666", 8))
		local wrapper = H.tmpfile(([[
mount --bind /dev/null %s/dev/null && mount --bind %s/dev /dev && exec "$@"
]]):format(dir, dir), ".sh")
		return "unshare -m sh " .. wrapper
	end

	local function syslog_lines()
		local lines, buf = {}, ffi.new("char[2048]")
		while true do
			local n = C.recv(sock, buf, 2048, MSG_DONTWAIT)
			if n <= 0 then return lines end
			lines[#lines + 1] = ffi.string(buf, n)
		end
	end

	it("goes to syslog with --syslog, and per-packet errors are rate-limited", function()
		local wrap = fake_syslog()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 6302 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 6302), H.udp()
		local script = H.tmpfile("return function(pkt) error('always fails') end", ".lua")
		local d = H.daemon(script .. " --queue 1 --syslog", wrap)
		finally(function() d:stop() end)
		H.wait_for(function() return H.queue_info(1) end, 5, "queue 1 to be bound")
		H.wait_queue_ready(1)
		for i = 1, 50 do tx:sendto("packet " .. i, "127.0.0.1", 6302) end
		assert.equal(50, #rx:recv_all(0.5), "the fallback accepts every packet")
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.equal("", d:output(), "nothing on stderr")

		local errors, suppressed, all = 0, 0, {}
		for _, line in ipairs(syslog_lines()) do
			all[#all + 1] = line
			assert.matches("^<%d+>.- nfqlua%[" .. d.pid .. "%]: ", line)
			if line:find("script error: " .. script .. ":1: always fails", 1, true) then
				assert.truthy(line:match("^<27>"), "facility daemon, priority err: " .. line)
				errors = errors + 1
			end
			local n = line:match("queue 1: (%d+) more script error lines? suppressed")
			suppressed = suppressed + (tonumber(n) or 0)
		end
		local text = table.concat(all, "\n")
		assert.matches("queue 1 bound", text, 1, true)
		assert.matches("received=50 accepted=50 dropped=0 repeated=0 requeued=0 fallback=50 script_errors=50", text, 1, true)
		assert.is_true(errors >= 1, text)
		assert.is_true(suppressed > 0, "some lines were held back:\n" .. text)
		assert.equal(50, errors + suppressed, "every error is logged or counted as suppressed:\n" .. text)
	end)
end)

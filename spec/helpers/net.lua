-- Test helpers: private network namespaces, iptables, UDP/TCP sockets and
-- daemon processes, for specs that run against the real kernel.
--
-- Every integration spec calls fresh_netns() first: the busted process moves
-- into a new network namespace with only lo, so its rules and queues vanish
-- with the namespace, also when the spec fails.
local ffi = require "ffi"
local bit = require "bit"

-- Plain libc names on purpose: nfq must coexist with scripts that declare
-- them (it prefixes its own).
if not pcall(ffi.typeof, "struct pollfd") then
	ffi.cdef [[
	struct pollfd { int fd; short events; short revents; };
	int poll(struct pollfd *fds, unsigned long nfds, int timeout);
	int socket(int domain, int type, int protocol);
	int bind(int fd, const void *addr, unsigned len);
	int connect(int fd, const void *addr, unsigned len);
	int listen(int fd, int backlog);
	int accept(int fd, void *addr, unsigned *len);
	int setsockopt(int fd, int level, int name, const void *val, unsigned len);
	long sendto(int fd, const void *buf, size_t len, int flags, const void *addr, unsigned alen);
	long recv(int fd, void *buf, size_t len, int flags);
	long send(int fd, const void *buf, size_t len, int flags);
	int close(int fd);
	int unshare(int flags);
	int setns(int fd, int nstype);
	int open(const char *path, int flags, ...);
	int getpid(void);
	char *strerror(int errnum);
	struct nfq_test_sockaddr_in { uint16_t family; uint16_t port; uint8_t addr[4]; uint8_t zero[8]; };
	struct nfq_test_sockaddr_in6 { uint16_t family; uint16_t port; uint32_t flowinfo; uint8_t addr[16]; uint32_t scope; };
	]]
end

local C = ffi.C
local H = {}

local AF_INET, AF_INET6, SOCK_STREAM, SOCK_DGRAM = 2, 10, 1, 2
local SOL_SOCKET, SO_RCVBUF, SO_REUSEADDR = 1, 8, 2
local POLLIN = 1
local CLONE_NEWNET = 0x40000000

H.root = os.getenv("NFQ_ROOT") or "."
-- make test points NFQLUA at the sanitizer build.
H.nfqlua = os.getenv("NFQLUA") or (H.root .. "/nfqlua")

-- A sanitizer report in a daemon's output fails the spec that ran it.
local function check_sanitizers(out)
	if out:find("Sanitizer", 1, true) or out:find("runtime error:", 1, true) then
		error("sanitizer report from nfqlua:\n" .. out, 3)
	end
	return out
end

local function syserr(what)
	error(what .. ": " .. ffi.string(C.strerror(ffi.errno())), 3)
end

--- Run a shell command; return its output, or raise with it.
function H.sh(cmd)
	local f = io.popen("( " .. cmd .. " ) 2>&1; echo \"::rc=$?\"")
	local out = f:read("*a")
	f:close()
	local body, rc = out:match("^(.-)::rc=(%d+)%s*$")
	if tonumber(rc) ~= 0 then
		error(("command failed (%s): %s\n%s"):format(rc, cmd, body), 2)
	end
	return body
end

function H.sleep(s)
	C.poll(nil, 0, math.floor(s * 1000))
end

function H.now()
	local f = io.open("/proc/uptime")
	local t = tonumber(f:read("*a"):match("^(%S+)"))
	f:close()
	return t
end

--- Move this process into a new network namespace with lo up.
function H.fresh_netns()
	if C.unshare(CLONE_NEWNET) ~= 0 then syserr("unshare(CLONE_NEWNET)") end
	H.sh("ip link set lo up")
end

--- Wait until `cond()` is true, or fail after `timeout` seconds.
function H.wait_for(cond, timeout, what)
	local deadline = H.now() + (timeout or 5)
	while true do
		local v = cond()
		if v then return v end
		if H.now() > deadline then
			error("timed out waiting for " .. (what or "condition"), 2)
		end
		H.sleep(0.02)
	end
end

--- The kernel's line for a queue in this namespace, as a table, or nil.
function H.queue_info(num)
	local f = io.open("/proc/net/netfilter/nfnetlink_queue")
	if not f then return nil end
	for line in f:lines() do
		local v = {}
		for n in line:gmatch("%d+") do v[#v + 1] = tonumber(n) end
		if v[1] == num then
			f:close()
			return { queue = v[1], portid = v[2], waiting = v[3], copy_mode = v[4],
				copy_range = v[5], queue_dropped = v[6], user_dropped = v[7], id_sequence = v[8] }
		end
	end
	f:close()
	return nil
end

--- Wait until queue `num` is bound with a copy mode (the kernel drops before that).
function H.wait_queue_ready(num, timeout)
	return H.wait_for(function()
		local info = H.queue_info(num)
		return info and info.copy_mode ~= 0 and info
	end, timeout, "queue " .. num .. " to be bound")
end

--- Run a library-mode queue (q:run(false)) until cond() holds.
function H.pump(q, cond, timeout)
	H.wait_for(function()
		assert(q:run(false))
		return cond()
	end, timeout or 5, "packets to reach the callback")
end

--- A new queue bound to num with cb, ready for traffic.
function H.bound_queue(num, cb, opts)
	local q = assert(require("nfq").new())
	assert(q:bind(num, cb, opts))
	H.wait_queue_ready(num)
	return q
end

--- Packet counter of the first rule in `chain` whose line matches `pattern`.
function H.rule_packets(table_name, chain, pattern)
	local out = H.sh(("iptables -t %s -L %s -v -x -n"):format(table_name, chain))
	for line in out:gmatch("[^\n]+") do
		if line:find(pattern) then
			return tonumber(line:match("^%s*(%d+)"))
		end
	end
	error(("no rule matching %q in %s/%s:\n%s"):format(pattern, table_name, chain, out), 2)
end

local function sockaddr(addr, port)
	if addr:find(":") then
		local sa = ffi.new("struct nfq_test_sockaddr_in6")
		sa.family = AF_INET6
		sa.port = bit.rshift(bit.bswap(port), 16)
		assert(addr == "::1", "only ::1 is supported")
		sa.addr[15] = 1
		return sa, ffi.sizeof(sa), AF_INET6
	end
	local sa = ffi.new("struct nfq_test_sockaddr_in")
	sa.family = AF_INET
	sa.port = bit.rshift(bit.bswap(port), 16)
	local i = 0
	for octet in addr:gmatch("%d+") do
		sa.addr[i] = tonumber(octet)
		i = i + 1
	end
	return sa, ffi.sizeof(sa), AF_INET
end

local Socket = {}
Socket.__index = Socket

--- A UDP socket bound to addr:port (port 0: any).
function H.udp(addr, port)
	local sa, len, family = sockaddr(addr or "127.0.0.1", port or 0)
	local fd = C.socket(family, SOCK_DGRAM, 0)
	if fd < 0 then syserr("socket") end
	local big = ffi.new("int[1]", 4 * 1024 * 1024)
	C.setsockopt(fd, SOL_SOCKET, SO_RCVBUF, big, 4)
	if port and C.bind(fd, sa, len) ~= 0 then syserr("bind") end
	return setmetatable({ fd = fd, family = family }, Socket)
end

function Socket:sendto(data, addr, port)
	local sa, len = sockaddr(addr, port)
	local n = C.sendto(self.fd, data, #data, 0, sa, len)
	if n < 0 then syserr("sendto") end
end

function Socket:send(data)
	local n = C.send(self.fd, data, #data, 0)
	if n < 0 then syserr("send") end
end

local recv_buf = ffi.new("uint8_t[70000]")

--- One datagram (or TCP read), or nil after `timeout` seconds.
function Socket:recv(timeout)
	local pfd = ffi.new("struct pollfd[1]")
	pfd[0].fd, pfd[0].events = self.fd, POLLIN
	if C.poll(pfd, 1, math.floor((timeout or 1) * 1000)) <= 0 then return nil end
	local n = C.recv(self.fd, recv_buf, 70000, 0)
	if n < 0 then syserr("recv") end
	return ffi.string(recv_buf, n)
end

--- Read datagrams until `timeout` seconds pass without one.
function Socket:recv_all(timeout)
	local got = {}
	while true do
		local d = self:recv(timeout or 0.5)
		if not d then return got end
		got[#got + 1] = d
	end
end

--- Send the following sendto() calls as UDP GSO: the kernel builds one large
-- packet and segments it into datagrams of `size` bytes.
function Socket:set_gso(size)
	local v = ffi.new("int[1]", size)
	if C.setsockopt(self.fd, 17, 103, v, 4) ~= 0 then syserr("setsockopt(UDP_SEGMENT)") end
end

function Socket:close()
	if self.fd >= 0 then C.close(self.fd) end
	self.fd = -1
end

--- A listening TCP socket on addr:port.
function H.tcp_listen(addr, port)
	local sa, len, family = sockaddr(addr, port)
	local fd = C.socket(family, SOCK_STREAM, 0)
	if fd < 0 then syserr("socket") end
	local one = ffi.new("int[1]", 1)
	C.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, one, 4)
	if C.bind(fd, sa, len) ~= 0 then syserr("bind") end
	if C.listen(fd, 8) ~= 0 then syserr("listen") end
	return setmetatable({ fd = fd, family = family }, Socket)
end

function Socket:accept(timeout)
	if not self:wait_readable(timeout) then return nil end
	local fd = C.accept(self.fd, nil, nil)
	if fd < 0 then syserr("accept") end
	return setmetatable({ fd = fd }, Socket)
end

function Socket:wait_readable(timeout)
	local pfd = ffi.new("struct pollfd[1]")
	pfd[0].fd, pfd[0].events = self.fd, POLLIN
	return C.poll(pfd, 1, math.floor((timeout or 1) * 1000)) > 0
end

--- A blocking TCP connection to addr:port.
function H.tcp_connect(addr, port)
	local sa, len, family = sockaddr(addr, port)
	local fd = C.socket(family, SOCK_STREAM, 0)
	if fd < 0 then syserr("socket") end
	if C.connect(fd, sa, len) ~= 0 then syserr("connect") end
	return setmetatable({ fd = fd }, Socket)
end

-- Every temporary file of a spec file lives in one directory, removed when
-- the helpers are collected: at the latest when busted closes the Lua state
-- on exit (os.tmpname would leave a file in /tmp per call). The directory is
-- 0755, as /tmp is searchable, for the specs that run as nobody; its name has
-- no Lua pattern characters, as specs match paths in output.
local scratch
local function scratch_dir()
	if not scratch then
		local dir = H.sh('d=$(mktemp -d /tmp/nfqspec_XXXXXX) && chmod 755 "$d" && echo "$d"'):gsub("%s+$", "")
		local sentinel = newproxy(true)
		getmetatable(sentinel).__gc = function() os.execute("rm -rf '" .. dir .. "'") end
		scratch = { dir = dir, sentinel = sentinel }
	end
	return scratch.dir
end

--- Write `text` to a new temporary file and return its path.
function H.tmpfile(text, suffix)
	local path = H.sh("mktemp " .. scratch_dir() .. "/f_XXXXXX"):gsub("%s+$", "") .. (suffix or "")
	local f = assert(io.open(path, "w"))
	f:write(text or "")
	f:close()
	return path
end

function H.read_file(path)
	local f = io.open(path)
	if not f then return nil end
	local s = f:read("*a")
	f:close()
	return s
end

local Daemon = {}
Daemon.__index = Daemon

--- Start `nfqlua ARGS` in the background; its output goes to a log file.
-- env is an optional "NAME=value ..." prefix for its environment.
function H.daemon(args, env)
	local dir = H.sh("mktemp -d"):gsub("%s+$", "")
	local d = setmetatable({ dir = dir, log = dir .. "/log", rc_file = dir .. "/rc" }, Daemon)
	if H.started then H.started[#H.started + 1] = d end
	os.execute(("( sh -c 'echo $$ > %s/pid; exec env %s %s %s' > %s 2>&1; echo $? > %s ) &"):format(
		dir, env or "", H.nfqlua, args, d.log, d.rc_file))
	d.pid = H.wait_for(function()
		local s = H.read_file(dir .. "/pid")
		return s and tonumber(s:match("%d+"))
	end, 5, "nfqlua to start")
	return d
end

function Daemon:output()
	return check_sanitizers(H.read_file(self.log) or "")
end

function Daemon:signal(sig)
	os.execute(("kill -%s %d 2>/dev/null"):format(sig, self.pid))
end

--- Wait for the daemon to exit; its exit status.
function Daemon:wait(timeout)
	return H.wait_for(function()
		local s = H.read_file(self.rc_file)
		return s and tonumber(s:match("%d+"))
	end, timeout or 10, "nfqlua to exit")
end

--- Wait until the log contains `text` (a plain string).
function Daemon:wait_output(text, timeout)
	return H.wait_for(function()
		return self:output():find(text, 1, true)
	end, timeout, "nfqlua to print " .. text .. "; output so far:\n" .. self:output())
end

--- Stop the daemon (SIGTERM, then SIGKILL) and remove its files; a sanitizer
-- report in its output, leaks at exit included, fails the spec.
function Daemon:stop()
	if self.stopped then return end
	self.stopped = true
	if not H.read_file(self.rc_file) then
		-- A SIGSTOPped daemon (fault specs) only takes TERM once continued.
		self:signal("CONT")
		self:signal("TERM")
		if not pcall(self.wait, self, 5) then self:signal("KILL") end
	end
	local out = H.read_file(self.log) or ""
	os.execute("rm -rf " .. self.dir)
	check_sanitizers(out)
end

--- For a describe block: each test runs in a fresh network namespace, and
-- every daemon it started is stopped after it, also when it fails.
function H.isolated_tests()
	local busted = require "busted"
	busted.before_each(function()
		H.started = {}
		H.fresh_netns()
	end)
	busted.after_each(function()
		for _, d in ipairs(H.started) do d:stop() end
		H.started = {}
	end)
end

--- Run nfqlua to completion; its exit status and output.
function H.run_nfqlua(args, prefix)
	local f = io.popen(("%s%s %s 2>&1; echo \"::rc=$?\""):format(prefix or "", H.nfqlua, args))
	local out = f:read("*a")
	f:close()
	local body, rc = out:match("^(.-)::rc=(%d+)%s*$")
	return tonumber(rc), check_sanitizers(body)
end

--- A DNS query for one name (A record), as a UDP payload.
function H.dns_query(name)
	local q = "\18\52\1\0\0\1\0\0\0\0\0\0"
	for label in name:gmatch("[^.]+") do q = q .. string.char(#label) .. label end
	return q .. "\0\0\1\0\1"
end

-- Checksums for building and rewriting packets in tests.
local function sum16(s, acc)
	acc = acc or 0
	for i = 1, #s - 1, 2 do
		acc = acc + s:byte(i) * 256 + s:byte(i + 1)
	end
	if #s % 2 == 1 then acc = acc + s:byte(#s) * 256 end
	return acc
end

local function fold(acc)
	while acc > 0xffff do acc = bit.band(acc, 0xffff) + bit.rshift(acc, 16) end
	return bit.band(bit.bnot(acc), 0xffff)
end

local function u16(n) return string.char(bit.rshift(n, 8) % 256, n % 256) end

--- Replace the UDP payload of an IPv4 packet, fixing every length and checksum.
function H.rewrite_udp4(packet, new_data)
	local ihl = bit.band(packet:byte(1), 15) * 4
	local ip = packet:sub(1, ihl)
	local total = ihl + 8 + #new_data
	ip = ip:sub(1, 2) .. u16(total) .. ip:sub(5, 10) .. "\0\0" .. ip:sub(13)
	ip = ip:sub(1, 10) .. u16(fold(sum16(ip))) .. ip:sub(13)
	local udp = packet:sub(ihl + 1, ihl + 4) .. u16(8 + #new_data) .. "\0\0"
	local pseudo = ip:sub(13, 20) .. "\0\17" .. u16(8 + #new_data)
	local csum = fold(sum16(udp .. new_data, sum16(pseudo)))
	if csum == 0 then csum = 0xffff end
	udp = udp:sub(1, 6) .. u16(csum)
	return ip .. udp .. new_data
end

--- The UDP payload of an IPv4 packet.
function H.udp4_data(packet)
	local ihl = bit.band(packet:byte(1), 15) * 4
	return packet:sub(ihl + 9)
end

return H

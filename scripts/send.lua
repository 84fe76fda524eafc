#!/usr/bin/env luajit
-- Send UDP datagrams to a port on 127.0.0.1 and listen on that port: it shows
-- what a filter let through, and as what. Needs only LuaJIT (no nc, no python).
--   scripts/send.lua PORT MESSAGE...             one datagram per MESSAGE; prints what arrived
--   scripts/send.lua PORT --count N [--rate R]   datagrams "1" to "N", R per second (default 1000);
--                                                prints how many arrived, lost, duplicated or out of order
-- Exit status: 0 once it has listened long enough, 1 for a system failure, 2 for a bad command line.
local ffi = require "ffi"
local bit = require "bit"

ffi.cdef [[
struct send_pollfd { int fd; short events; short revents; };
struct send_sockaddr_in { uint16_t family; uint16_t port; uint8_t addr[4]; uint8_t zero[8]; };
struct send_timespec { long tv_sec; long tv_nsec; };
int send_socket(int domain, int type, int protocol) asm("socket");
int send_bind(int fd, const struct send_sockaddr_in *addr, unsigned len) asm("bind");
int send_setsockopt(int fd, int level, int name, const void *val, unsigned len) asm("setsockopt");
long send_sendto(int fd, const void *buf, size_t len, int flags, const struct send_sockaddr_in *addr,
	unsigned alen) asm("sendto");
long send_recv(int fd, void *buf, size_t len, int flags) asm("recv");
int send_poll(struct send_pollfd *fds, unsigned long nfds, int timeout) asm("poll");
int send_clock_gettime(int clock, struct send_timespec *ts) asm("clock_gettime");
char *send_strerror(int errnum) asm("strerror");
]]
local C = ffi.C

local AF_INET, SOCK_DGRAM, SOL_SOCKET, SO_RCVBUF, POLLIN, MSG_DONTWAIT = 2, 2, 1, 8, 1, 0x40
-- How long to listen after the last datagram: a verdict comes within
-- microseconds, unless a filter holds packets on purpose.
local LINGER = 0.5

local function usage(msg)
	io.stderr:write("send.lua: ", msg, "\n",
		"usage: scripts/send.lua PORT MESSAGE...  or  scripts/send.lua PORT --count N [--rate R]\n")
	os.exit(2)
end

local function fail(what)
	io.stderr:write(("send.lua: %s: %s\n"):format(what, ffi.string(C.send_strerror(ffi.errno()))))
	os.exit(1)
end

local ts = ffi.new("struct send_timespec")
local function now()
	C.send_clock_gettime(1, ts)
	return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local port = tonumber(arg[1])
if not port or port < 1 or port > 65535 or port % 1 ~= 0 then
	usage("PORT must be a number from 1 to 65535, got " .. tostring(arg[1]))
end
local messages, count, rate = {}, nil, 1000
local i = 2
while arg[i] do
	if arg[i] == "--count" or arg[i] == "--rate" then
		local n = tonumber(arg[i + 1])
		if not n or n < 1 or n % 1 ~= 0 then usage(arg[i] .. " needs a whole number above 0") end
		if arg[i] == "--count" then count = n else rate = n end
		i = i + 2
	else
		messages[#messages + 1] = arg[i]
		i = i + 1
	end
end
if count and #messages > 0 then usage("give MESSAGEs or --count, not both") end
if not count and #messages == 0 then usage("nothing to send") end

local addr = ffi.new("struct send_sockaddr_in", { family = AF_INET, addr = { 127, 0, 0, 1 },
	port = bit.rshift(bit.bswap(port), 16) })
local rx, tx = C.send_socket(AF_INET, SOCK_DGRAM, 0), C.send_socket(AF_INET, SOCK_DGRAM, 0)
if rx < 0 or tx < 0 then fail("socket") end
-- Room for every datagram of a burst, should reading fall behind.
C.send_setsockopt(rx, SOL_SOCKET, SO_RCVBUF, ffi.new("int[1]", 4 * 1024 * 1024), 4)
if C.send_bind(rx, addr, ffi.sizeof(addr)) ~= 0 then
	fail("cannot listen on 127.0.0.1:" .. port .. " (is something else listening there?)")
end

local received = {}
local buf = ffi.new("char[65536]")
local pfd = ffi.new("struct send_pollfd", { fd = rx, events = POLLIN })

-- Read what has arrived, waiting up to `timeout` seconds for the first datagram.
local function drain(timeout)
	if C.send_poll(pfd, 1, math.max(0, math.floor(timeout * 1000))) <= 0 then return end
	while true do
		local n = C.send_recv(rx, buf, 65536, MSG_DONTWAIT)
		if n < 0 then return end
		received[#received + 1] = ffi.string(buf, n)
	end
end

local function send(text)
	if C.send_sendto(tx, text, #text, 0, addr, ffi.sizeof(addr)) < 0 then fail("sendto") end
end

if not count then
	local shown = {}
	for _, m in ipairs(messages) do
		send(m)
		shown[#shown + 1] = ("%q"):format(m)
		drain(0)
	end
	local deadline = now() + LINGER
	while now() < deadline do drain(deadline - now()) end
	print(("sent %d to 127.0.0.1:%d: %s"):format(#messages, port, table.concat(shown, " ")))
	for j = 1, #received do received[j] = ("%q"):format(received[j]) end
	print(("received %d: %s"):format(#received, table.concat(received, " ")))
	os.exit(0)
end

-- Numbered datagrams, paced; the receiver is read while sending.
local start = now()
for n = 1, count do
	local due = start + (n - 1) / rate
	while now() < due do drain(due - now()) end
	send(tostring(n))
end
local deadline = now() + LINGER
while #received < count and now() < deadline do drain(deadline - now()) end
local elapsed = now() - start

-- A filter may have appended to the number ("17 v1"): count each kind.
local seen, kinds, order = {}, {}, {}
local duplicated, out_of_order, last = 0, 0, 0
for _, text in ipairs(received) do
	local n, rest = text:match("^(%d+)(.*)$")
	n = tonumber(n)
	if n then
		if seen[n] then duplicated = duplicated + 1 end
		seen[n] = true
		if n < last then out_of_order = out_of_order + 1 end
		last = n
	end
	rest = rest or text
	if not kinds[rest] then
		kinds[rest] = 0
		order[#order + 1] = rest
	end
	kinds[rest] = kinds[rest] + 1
end
local arrived = 0
for n = 1, count do
	if seen[n] then arrived = arrived + 1 end
end
print(("sent %d to 127.0.0.1:%d in %.1f s; received %d: %d lost, %d duplicated, %d out of order"):format(
	count, port, elapsed, #received, count - arrived, duplicated, out_of_order))
if #order > 1 or (order[1] and order[1] ~= "") then
	local parts = {}
	for _, rest in ipairs(order) do parts[#parts + 1] = ("%d as \"N%s\""):format(kinds[rest], rest) end
	print("  arrived " .. table.concat(parts, ", "))
end
os.exit(0)

-- Split segments and fragments on the wire: a library-mode queue drops each
-- packet and sends the pieces that nfq.tcp_split or nfq.ip_fragment made
-- from it through a raw socket of this test (the pieces carry mark 0x1, which
-- a rule ahead of the queue's lets through), over a veth pair to a second
-- namespace, whose kernel must put the original bytes back together.
local ffi = require "ffi"
local bit = require "bit"
local nfq = require "nfq"
local H = require "helpers.net"

local C = ffi.C
if not pcall(function() return C.nfq_spec_inet_pton end) then
	ffi.cdef [[int nfq_spec_inet_pton(int af, const char *src, void *dst) asm("inet_pton");]]
end

local AF_INET, AF_INET6, SOCK_STREAM, SOCK_DGRAM, SOCK_RAW = 2, 10, 1, 2, 3
local IPPROTO_RAW, IPPROTO_IPV6, IPV6_HDRINCL = 255, 41, 36
local SOL_SOCKET, SO_MARK, SO_RCVBUF, SO_REUSEADDR = 1, 36, 8, 2
local O_RDONLY, CLONE_NEWNET = 0, 0x40000000
local SEND_MARK = 1

local ADDR4 = { "169.254.81.1", "169.254.81.2" }
local ADDR6 = { "fd00:81::1", "fd00:81::2" }

local function syserr(what)
	error(what .. ": " .. ffi.string(C.strerror(ffi.errno())), 2)
end

local function sockaddr(addr, port)
	if addr:find(":", 1, true) then
		local sa = ffi.new("struct nfq_test_sockaddr_in6")
		sa.family, sa.port = AF_INET6, bit.rshift(bit.bswap(port), 16)
		assert(C.nfq_spec_inet_pton(AF_INET6, addr, sa.addr) == 1)
		return sa, ffi.sizeof(sa), AF_INET6
	end
	local sa = ffi.new("struct nfq_test_sockaddr_in")
	sa.family, sa.port = AF_INET, bit.rshift(bit.bswap(port), 16)
	assert(C.nfq_spec_inet_pton(AF_INET, addr, sa.addr) == 1)
	return sa, ffi.sizeof(sa), AF_INET
end

local function setsockopt_int(fd, level, name, value)
	if C.setsockopt(fd, level, name, ffi.new("int[1]", value), 4) ~= 0 then syserr("setsockopt") end
end

-- The helpers' socket methods (recv, sendto...) for sockets made here.
local socket_mt

local function bound_socket(kind, addr, port)
	local sa, len, family = sockaddr(addr, port)
	local fd = C.socket(family, kind, 0)
	if fd < 0 then syserr("socket") end
	setsockopt_int(fd, SOL_SOCKET, SO_REUSEADDR, 1)
	setsockopt_int(fd, SOL_SOCKET, SO_RCVBUF, 4 * 1024 * 1024)
	if C.bind(fd, sa, len) ~= 0 then syserr("bind " .. addr) end
	if kind == SOCK_STREAM and C.listen(fd, 8) ~= 0 then syserr("listen") end
	return setmetatable({ fd = fd }, socket_mt)
end

--- Send a packet buffer as it is, from a raw socket with the send mark, to
-- the destination in its header.
local function raw_sender()
	local fds = {}
	for _, family in ipairs { AF_INET, AF_INET6 } do
		local fd = C.socket(family, SOCK_RAW, IPPROTO_RAW)
		if fd < 0 then syserr("socket(SOCK_RAW)") end
		setsockopt_int(fd, SOL_SOCKET, SO_MARK, SEND_MARK)
		if family == AF_INET6 then setsockopt_int(fd, IPPROTO_IPV6, IPV6_HDRINCL, 1) end
		fds[family] = fd
	end
	local sent = 0
	local send = function(b)
		local ptr, len = b:view()
		local sa
		if bit.rshift(ptr[0], 4) == 4 then
			sa = ffi.new("struct nfq_test_sockaddr_in")
			sa.family = AF_INET
			ffi.copy(sa.addr, ptr + 16, 4)
		else
			sa = ffi.new("struct nfq_test_sockaddr_in6")
			sa.family = AF_INET6
			ffi.copy(sa.addr, ptr + 24, 16)
		end
		local n = C.sendto(fds[sa.family], ptr, len, 0, sa, ffi.sizeof(sa))
		if n ~= len then syserr(("raw sendto of %d bytes"):format(len)) end
		sent = sent + 1
	end
	local function close()
		for _, fd in pairs(fds) do C.close(fd) end
	end
	return send, function() return sent end, close
end

--- The bytes of a test stream: n pseudo-random bytes from seed.
local function stream(n, seed)
	local chunks, x = {}, seed
	for i = 1, n do
		x = (x * 1103515245 + 12345) % 2147483648
		chunks[i] = string.char(bit.band(bit.rshift(x, 16), 255))
	end
	return table.concat(chunks)
end

describe("split and fragmented packets on the wire #kernel", function()
	H.isolated_tests()
	local peer, q, close_sender

	before_each(function()
		socket_mt = getmetatable(H.udp())
		peer = "nfqsplit" .. C.getpid()
		H.sh("ip netns add " .. peer)
		H.sh("ip link add nfqs0 type veth peer name nfqs1 netns " .. peer)
		H.sh(("ip addr add %s/24 dev nfqs0 && ip -6 addr add %s/64 dev nfqs0 nodad && ip link set nfqs0 up")
			:format(ADDR4[1], ADDR6[1]))
		H.sh(("ip netns exec %s sh -c 'ip addr add %s/24 dev nfqs1 && ip -6 addr add %s/64 dev nfqs1 nodad && "
			.. "ip link set nfqs1 up && ip link set lo up'"):format(peer, ADDR4[2], ADDR6[2]))
		for _, tables in ipairs { "iptables", "ip6tables" } do
			H.sh(("%s -A OUTPUT -o nfqs0 -m mark --mark 0x%x/0x%x -j RETURN"):format(tables, SEND_MARK, SEND_MARK))
		end
	end)

	after_each(function()
		if q then q:close() end
		q = nil
		if close_sender then close_sender() end
		close_sender = nil
		nfq.recycle_buffers()
		os.execute("ip netns del " .. peer .. " 2>/dev/null")
	end)

	local function set_mtu(mtu)
		H.sh("ip link set nfqs0 mtu " .. mtu)
		H.sh(("ip netns exec %s ip link set nfqs1 mtu %d"):format(peer, mtu))
	end

	--- fn() run in the peer namespace: the sockets it makes live there.
	local function in_peer(fn)
		local home = C.open("/proc/self/ns/net", O_RDONLY)
		local there = C.open("/var/run/netns/" .. peer, O_RDONLY)
		assert(home >= 0 and there >= 0, "cannot open the namespaces")
		if C.setns(there, CLONE_NEWNET) ~= 0 then syserr("setns") end
		local ok, result = pcall(fn)
		assert(C.setns(home, CLONE_NEWNET) == 0, "cannot go back to the test's namespace")
		C.close(home)
		C.close(there)
		assert(ok, result)
		return result
	end

	it("delivers a TCP transfer whose data segments were each sent again in 2 or 3 pieces", function()
		local DATA_LEN, PORT = 400 * 1024, 5090
		local data = stream(DATA_LEN, 7)
		local server = in_peer(function() return bound_socket(SOCK_STREAM, ADDR4[2], PORT) end)
		H.sh("iptables -A OUTPUT -o nfqs0 -p tcp --dport " .. PORT .. " -j NFQUEUE --queue-num 1")
		local send, sent
		send, sent, close_sender = raw_sender()
		local n, split = 0, 0
		-- Three ways in turn: two pieces; three in reverse order; two that overlap.
		q = H.bound_queue(1, function(pkt)
			local tcp = pkt:tcp()
			local _, offset = pkt:transport()
			local len = pkt:get_payload_len() - offset - tcp.header_length
			if len < 3 then return pkt:accept() end
			n = n + 1
			local third, half = math.floor(len / 3), math.floor(len / 2)
			local pieces
			if n % 3 == 0 then
				pieces = { nfq.tcp_split(pkt, half) }
			elseif n % 3 == 1 then
				pieces = { nfq.tcp_split(pkt, third, 2 * third, { reverse = true }) }
			else
				pieces = { nfq.tcp_split(pkt, half, { overlap = math.min(8, half) }) }
			end
			for _, b in ipairs(pieces) do send(b) end
			split = split + 1
			pkt:drop()
		end, { gso = false })
		-- The client is another process, so that this one can serve the queue.
		local client = H.tmpfile(([[
			package.path = %q
			local H = require "helpers.net"
			local data = io.open(%q, "rb"):read("*a")
			local c = H.tcp_connect(%q, %d)
			for at = 1, #data, 16384 do c:send(data:sub(at, at + 16383)) end
			c:close()
		]]):format(package.path, H.tmpfile(data), ADDR4[2], PORT), ".lua")
		os.execute("luajit " .. client .. " > /dev/null 2>&1 &")
		local conn, got = nil, {}
		local deadline = H.now() + 30
		while true do
			assert(q:run(false))
			if not conn then
				conn = server:accept(0.01)
			else
				local chunk = conn:recv(0.01)
				if chunk == "" then break end
				got[#got + 1] = chunk
			end
			assert(H.now() < deadline, "the transfer did not finish")
		end
		local received = table.concat(got)
		assert.equal(#data, #received)
		assert.is_true(data == received, "the bytes received differ from those sent")
		assert.is_true(split > 100, "only " .. split .. " segments were split")
		assert.is_true(sent() >= 2 * split)
		conn:close()
		server:close()
	end)

	local function udp_fragments(family, mtu, port)
		local addr = family == AF_INET and ADDR4 or ADDR6
		local COUNT, SIZE = 20, 3000
		set_mtu(mtu)
		local rx = in_peer(function() return bound_socket(SOCK_DGRAM, addr[2], port) end)
		H.sh(("%s -A OUTPUT -o nfqs0 -p udp --dport %d -j NFQUEUE --queue-num 1")
			:format(family == AF_INET and "iptables" or "ip6tables", port))
		local send, sent
		send, sent, close_sender = raw_sender()
		local seen = 0
		q = H.bound_queue(1, function(pkt)
			seen = seen + 1
			local b = pkt:copy()
			local ip = b:ip()
			if ip then
				-- Linux sends a datagram that needs no fragmenting with id 0 and DF, and a raw
				-- socket gives a packet with id 0 a new id: the fragments would not match.
				ip.dont_fragment = false
				ip.id = 1000 + seen
				b:fix_checksums()
			end
			for _, f in ipairs { nfq.ip_fragment(b, 1000, 2000, { reverse = seen % 2 == 0 }) } do send(f) end
			pkt:drop()
		end)
		local tx = setmetatable({ fd = C.socket(family, SOCK_DGRAM, 0) }, socket_mt)
		local datagrams = {}
		for i = 1, COUNT do
			datagrams[i] = stream(SIZE, i)
			local sa, len = sockaddr(addr[2], port)
			assert(C.sendto(tx.fd, datagrams[i], SIZE, 0, sa, len) == SIZE)
		end
		local got = {}
		local deadline = H.now() + 10
		while #got < COUNT and H.now() < deadline do
			assert(q:run(false))
			got[#got + 1] = rx:recv(0.01)
		end
		assert.equal(COUNT, seen)
		assert.equal(3 * COUNT, sent())
		assert.equal(COUNT, #got)
		for i = 1, COUNT do assert.is_true(got[i] == datagrams[i], "datagram " .. i .. " differs") end
		assert.equal(COUNT, seen, "the fragments sent came back to the queue")
		tx:close()
		rx:close()
	end

	it("delivers UDP datagrams sent again as IPv4 fragments, in order and in reverse", function()
		udp_fragments(AF_INET, 1500, 5091)
	end)

	it("delivers UDP datagrams sent again as IPv6 fragments, in order and in reverse", function()
		udp_fragments(AF_INET6, 1280, 5092)
	end)
end)

describe("split_tcp.lua in the daemon #kernel", function()
	H.isolated_tests()

	it("sends each connection's first data segment as two pieces, and the receiver reads it whole", function()
		H.sh("iptables -A OUTPUT -o lo -p tcp --dport 9443 -m mark --mark 0x1/0x1 -j RETURN")
		H.sh("iptables -A OUTPUT -o lo -p tcp --dport 9443 -j NFQUEUE --queue-num 1")
		local d = H.daemon(H.root .. "/scripts/examples/split_tcp.lua --queue 1 --no-gso --send --send-mark 0x1/0x1")
		H.wait_queue_ready(1)
		local server = H.tcp_listen("127.0.0.1", 9443)
		local request = "GET / HTTP/1.1\r\nHost: split.example\r\n\r\n"
		for round = 1, 3 do
			local client = H.tcp_connect("127.0.0.1", 9443)
			local conn = assert(server:accept(2), "the connection")
			client:send(request)
			local got = ""
			while #got < #request do
				local part = conn:recv(2)
				if not part then break end
				got = got .. part
			end
			assert.equal(request, got, "round " .. round)
			client:close()
			conn:close()
		end
		d:signal("USR1")
		d:wait_output("sent=6 send_errors=0")
		assert.matches("dropped=3 ", d:output(), 1, true)
	end)
end)

-- pkt:bypass(): the packet leaves with the bypass mark, the README's CONNMARK
-- rules save it on the connection, and the rest of the connection no longer
-- reaches the queue. Each rule set of README, Bypass, runs here as written
-- under a TCP transfer through scripts/examples/bypass_after.lua: INPUT
-- and OUTPUT on loopback, FORWARD through this namespace as a router between
-- two others. The kernel's own counters (the queue's id sequence, the rules'
-- packet counts) say how much reached the queue.
local ffi = require "ffi"
local bit = require "bit"
local nfq = require "nfq"
local testing = require "nfq.testing"
local batch = require "helpers.batch"
local H = require "helpers.net"

local C = nfq._C
local BYPASS = 0x40000000
local EXAMPLE = H.root .. "/scripts/examples/bypass_after.lua"

--- A rule set of README, Bypass, as written, or with another mark.
local function readme_rules(name, mark)
	local readme = assert(H.read_file(H.root .. "/README.md"))
	local text = readme:match("<!%-%- check: " .. name:gsub("%-", "%%-") .. " %-%->\n```sh\n(.-)```")
	assert(text, "no README block " .. name)
	if mark then text = text:gsub("0x40000000", mark) end
	return text
end

local function apply(rules)
	H.sh("set -e\n" .. rules)
end

-- A TCP receiver that counts the bytes until the sender closes, and answers
-- with their number; and its sender, which prints that answer.
local RECEIVER = [[
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5034))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
n = 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    n += len(b)
c.sendall(str(n).encode())
c.close()
]]
local SENDER = [[
import socket, sys
c = socket.create_connection((sys.argv[1], 5034), timeout=60)
chunk, left = b"x" * (1 << 20), int(sys.argv[2])
while left > 0:
    left -= c.send(chunk[:left])
c.shutdown(socket.SHUT_WR)
print(c.recv(64).decode())
]]

--- A TCP connection to server_addr carries `bytes`: the number the receiver
-- counted. in_server and in_client prefix the commands that run on either
-- side (ip netns exec NAME).
local function transfer(server_addr, bytes, in_server, in_client)
	in_server, in_client = in_server or "", in_client or ""
	local log, pid = H.tmpfile("", ".log"), H.tmpfile("", ".pid")
	os.execute(("%stimeout 120 python3 %s %s > %s 2>&1 & echo $! > %s"):format(in_server, H.tmpfile(RECEIVER, ".py"),
		server_addr, log, pid))
	local ok, out = pcall(function()
		H.wait_for(function() return H.read_file(log):find("listening", 1, true) end, 10, "the receiver to listen")
		return H.sh(("%stimeout 120 python3 %s %s %d"):format(in_client, H.tmpfile(SENDER, ".py"), server_addr, bytes))
	end)
	os.execute(("kill %d 2>/dev/null"):format(tonumber(H.read_file(pid):match("%d+"))))
	assert(ok, out)
	return tonumber(out:match("^(%d+)")) or error("the sender printed: " .. out)
end

--- nfqlua with bypass_after.lua on queue 1, ready for traffic.
local function start_daemon(flags)
	local d = H.daemon(EXAMPLE .. " --queue 1 " .. (flags or ""), "NFQ_BYPASS_AFTER=10")
	d:wait_output("pkt:bypass() sets mark")
	H.wait_queue_ready(1)
	return d
end

-- About ten packets of the connection reach the queue, plus those the
-- kernel had queued before the verdict that bypassed it.
local AFTER, IN_FLIGHT = 10, 40

--- The transfer's counters: all bytes arrived, the queue saw about ten
-- packets, and the accept rule ahead of it took the rest.
local function assert_bypassed(chain, bytes, received)
	assert.equal(bytes, received)
	local queued = H.queue_info(1).id_sequence
	local msg = ("%d packets reached the queue"):format(queued)
	assert.is_true(queued >= AFTER, msg)
	assert.is_true(queued <= AFTER + IN_FLIGHT, msg)
	assert.equal(queued, H.rule_packets("filter", chain, "NFQUEUE"))
	local skipped = H.rule_packets("filter", chain, "mark match")
	assert.is_true(skipped > 10 * queued, ("%d packets skipped the queue, %d reached it"):format(skipped, queued))
	assert.is_true(H.rule_packets("security", chain, "CONNMARK save") > 0)
end

describe("pkt:bypass() on real traffic #kernel", function()
	H.isolated_tests()
	local BYTES = 256 * 1024 * 1024

	it("keeps a TCP transfer out of the queue after ten packets: INPUT", function()
		apply(readme_rules("bypass-input"))
		local d = start_daemon()
		assert_bypassed("INPUT", BYTES, transfer("127.0.0.1", BYTES))
		assert.matches("pkt:bypass() sets mark 0x40000000/0x40000000 on the packet: CONNMARK rules keep it", d:output(),
			1, true)
	end)

	it("keeps a TCP transfer out of the queue after ten packets: OUTPUT", function()
		apply(readme_rules("bypass-output"))
		start_daemon()
		assert_bypassed("OUTPUT", BYTES, transfer("127.0.0.1", BYTES))
	end)

	it("keeps a TCP transfer out of the queue after ten packets: FORWARD", function()
		-- This namespace routes between a client and a server namespace.
		local tag = tostring(ffi.C.getpid())
		local client, server = "nfq34c" .. tag, "nfq34s" .. tag
		finally(function()
			os.execute(("ip netns pids %s 2>/dev/null | xargs -r kill 2>/dev/null"):format(server))
			os.execute(("ip netns del %s 2>/dev/null; ip netns del %s 2>/dev/null"):format(client, server))
		end)
		H.sh(([[
set -e
ip netns add C; ip netns add S
ip link add r-c type veth peer name c-r netns C
ip link add r-s type veth peer name s-r netns S
ip addr add 169.254.34.1/30 dev r-c; ip link set r-c up
ip addr add 169.254.34.5/30 dev r-s; ip link set r-s up
ip -n C addr add 169.254.34.2/30 dev c-r; ip -n C link set c-r up; ip -n C link set lo up
ip -n S addr add 169.254.34.6/30 dev s-r; ip -n S link set s-r up; ip -n S link set lo up
ip -n C route add default via 169.254.34.1
ip -n S route add default via 169.254.34.5
echo 1 > /proc/sys/net/ipv4/ip_forward
]]):gsub("%f[%w]C%f[%W]", client):gsub("%f[%w]S%f[%W]", server))
		apply(readme_rules("bypass-forward"))
		start_daemon()
		assert_bypassed("FORWARD", BYTES, transfer("169.254.34.6", BYTES, "ip netns exec " .. server .. " ",
			"ip netns exec " .. client .. " "))
	end)

	it("sets the bit --bypass-mark gives, and that one only", function()
		apply(readme_rules("bypass-input", "0x100"))
		-- Counts packets with the default bit without stopping them.
		H.sh("iptables -t security -I INPUT -m mark --mark 0x40000000/0x40000000")
		local d = start_daemon("--bypass-mark 0x100")
		local bytes = 64 * 1024 * 1024
		assert_bypassed("INPUT", bytes, transfer("127.0.0.1", bytes))
		assert.equal(0, H.rule_packets("security", "INPUT", "mark match 0x40000000/0x40000000"))
		assert.matches("pkt:bypass() sets mark 0x100/0x100 on the packet", d:output(), 1, true)
	end)

	-- The same rules with ip6tables for IPv6.
	for _, family in ipairs { { "127.0.0.1", "iptables" }, { "::1", "ip6tables" } } do
		local addr, tables = family[1], family[2]
		it(("bypasses a UDP flow over %s in library mode, keeping the other bits of the packet's mark"):format(addr),
			function()
				apply((readme_rules("bypass-output"):gsub("iptables", tables)))
				-- Counts, without stopping them, packets with the socket's mark and the bit.
				H.sh(tables .. " -t security -I OUTPUT -m mark --mark 0x40000005")
				local seen = 0
				local q = H.bound_queue(1, function(pkt)
					seen = seen + 1
					if seen >= 10 then pkt:bypass() else pkt:accept() end
				end)
				assert.same({ "mark", BYPASS, BYPASS }, { q:bypass_path() })
				local rx, tx = H.udp(addr, 6034), H.udp(addr)
				local SOL_SOCKET, SO_MARK = 1, 36
				assert.equal(0, ffi.C.setsockopt(tx.fd, SOL_SOCKET, SO_MARK, ffi.new("int[1]", 5), 4))
				-- One datagram at a time: each is delivered before the next is sent.
				for i = 1, 30 do
					tx:sendto("datagram " .. i, addr, 6034)
					local got
					H.wait_for(function()
						assert(q:run(false))
						got = rx:recv(0.01)
						return got
					end, 5, "datagram " .. i)
					assert.equal("datagram " .. i, got)
				end
				assert.equal(10, seen)
				assert.equal(10, H.queue_info(1).id_sequence)
				-- The tenth left with the bit, the twenty after it came with it from the connection.
				local counters = H.sh(tables .. " -t security -L OUTPUT -v -x -n")
				assert.equal("21", counters:match("\n%s*(%d+)[^\n]*mark match 0x40000005\n"), counters)
				q:close()
				rx:close()
				tx:close()
			end)
	end
end)

describe("pkt:bypass()", function()
	local udp = testing.packet { dport = 53, payload = "x" }

	it("accepts with the bypass bit or-ed into the mark, after set_mark too", function()
		local r = testing.run(function(pkt)
			if pkt.id == 2 then pkt:set_mark(0x80000005) end
			pkt:bypass()
		end, { udp, udp, { bytes = udp, mark = 0x7 }, { bytes = udp, mark = 0xffffffff } })
		local marks = {}
		for i, v in ipairs(r) do
			assert.equal("accept", v.verdict)
			marks[i] = v.mark
		end
		assert.same({ BYPASS, 0xc0000005, 0x40000007, 0xffffffff }, marks)
	end)

	it("is a verdict: a second one raises, and so does a gone packet", function()
		local kept
		local r = testing.run(function(pkt)
			pkt:accept()
			local ok, err = pcall(pkt.bypass, pkt)
			assert.is_false(ok)
			assert.matches("already has a verdict", err)
			kept = pkt
		end, { udp })
		assert.equal("accept", r[1].verdict)
		assert.is_nil(r[1].mark)
		assert.has_error(function() kept:bypass() end)
	end)

	it("takes its mark and mask from --bypass-mark under --replay, and nfq.bypass_path() says so", function()
		local function le32(n)
			return string.char(n % 256, bit.rshift(n, 8) % 256, bit.rshift(n, 16) % 256, bit.rshift(n, 24) % 256)
		end
		local cap = H.tmpfile(le32(0xa1b2c3d4) .. "\2\0\4\0" .. le32(0) .. le32(0) .. le32(65535) .. le32(101)
			.. le32(1700000000) .. le32(0) .. le32(#udp) .. le32(#udp) .. udp, ".pcap")
		local script = H.tmpfile([[
local nfq = require "nfq"
return {
	on_start = function() print("bypass: " .. table.concat({ nfq.bypass_path() }, " ")) end,
	on_packet = function(pkt) pkt:bypass() end,
}]], ".lua")
		local rc, out = H.run_nfqlua(("--replay %s %s --bypass-mark 0x30/0xf0 --mark 1029"):format(cap, script))
		assert.equal(0, rc, out)
		assert.matches("bypass: mark 48 240", out, 1, true)
		assert.matches("mark=0x435", out, 1, true)
	end)

	it("also sets the connection's mark with the verdict on a queue with conntrack data", function()
		-- No kernel here has conntrack on queues: the packet's fields are set
		-- by hand, and the verdict message goes to a queue nobody bound.
		local got = {}
		local run, keep = batch.synthetic_queue(function(pkt)
			local p = nfq._c_packet(pkt)
			p.flags = bit.bor(p.flags, C.NFQ_PF_CT)
			p.ct_mark = 0x81
			pkt:bypass()
			got[#got + 1] = { tonumber(p.new_mark), tonumber(p.new_connmark), bit.band(p.flags, C.NFQ_PF_CONNMARK_SET) ~= 0 }
		end, function() return 53 end)
		keep.q.flags = C.NFQ_FLAG_CONNTRACK
		run()
		assert.same({ BYPASS, BYPASS + 0x81, true }, got[1])
		assert.equal("conntrack", (nfq._adopt(keep.q, function() end):bypass_path()))
	end)

	it("allocates nothing per packet, nor does bypass_after.lua", function()
		local example = assert(loadfile(EXAMPLE))().on_packet
		for _, cb in ipairs { function(pkt) pkt:bypass() end, example } do
			jit.flush()
			local run = batch.synthetic_queue(cb, function(i) return 8000 + i end)
			local grown = batch.heap_growth(run, 2000, 500000 / batch.SIZE)
			assert.is_true(grown < 16, ("the Lua heap grew by %.1f KB over 500k packets"):format(grown))
		end
	end)
end)

describe("bypass marks that make no sense", function()
	it("are refused by nfqlua with one line and exit status 2", function()
		for _, value in ipairs { "0", "0x3/0x1", "zz", "0x1/", "0x100000000", "-1", "1/0" } do
			local rc, out = H.run_nfqlua(EXAMPLE .. " --queue 1 --bypass-mark " .. value)
			assert.equal(2, rc, out)
			assert.matches("^nfqlua: %-%-bypass%-mark [^\n]+\n$", out)
		end
	end)

	it("are refused by bind", function()
		local q = nfq.new()
		local cb = function() end
		for opts, msg in pairs {
			[{ bypass_mark = 0 }] = "bypass_mark 0 sets no bit",
			[{ bypass_mark = 4, bypass_mask = 0 }] = "bypass_mask 0 sets no bit",
			[{ bypass_mark = 3, bypass_mask = 1 }] = "bypass_mark 0x3 has bits outside bypass_mask 0x1",
			[{ bypass_mark = -1 }] = "bypass_mark must be an integer",
			[{ bypass_mask = "x" }] = "bypass_mask must be an integer",
		} do
			local ok, err = pcall(q.bind, q, 1, cb, opts)
			assert.is_false(ok)
			assert.matches(msg, err, 1, true)
		end
		q:close()
	end)
end)

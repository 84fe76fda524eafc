-- Every example script, run by the daemon on real traffic.
local H = require "helpers.net"

local dns_query = H.dns_query

describe("example scripts #kernel", function()
	local d
	H.isolated_tests()

	local function run(example, args, env)
		d = H.daemon(H.root .. "/scripts/examples/" .. example .. " --queue 1 " .. (args or ""), env)
		H.wait_queue_ready(1)
		return d
	end

	it("port_firewall.lua drops blocked ports only", function()
		H.sh("iptables -A OUTPUT -o lo -p udp -j NFQUEUE --queue-num 1")
		local open, blocked, tx = H.udp("127.0.0.1", 8001), H.udp("127.0.0.1", 5555), H.udp()
		run("port_firewall.lua", "", "NFQ_BLOCKED_PORTS=23,5555")
		tx:sendto("welcome", "127.0.0.1", 8001)
		tx:sendto("unwelcome", "127.0.0.1", 5555)
		assert.equal("welcome", open:recv(1))
		assert.is_nil(blocked:recv(0.3))
	end)

	it("dns_filter.lua drops queries for blocked domains and their subdomains", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 53 -j NFQUEUE --queue-num 1")
		local server, client = H.udp("127.0.0.1", 53), H.udp()
		run("dns_filter.lua", "", "NFQ_BLOCKED_DOMAINS=ads.example,tracker.test")
		for _, name in ipairs { "www.example.org", "ads.example", "x.y.ADS.example", "tracker.test", "notads.example" } do
			client:sendto(dns_query(name), "127.0.0.1", 53)
		end
		local got = {}
		for _, q in ipairs(server:recv_all(0.5)) do got[#got + 1] = q end
		assert.same({ dns_query("www.example.org"), dns_query("notads.example") }, got)
		d:wait_output("blocked DNS query for x.y.ads.example")
	end)

	it("rewrite_payload.lua rewrites and fixes checksums, as the peer receives it", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 8003 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 8003), H.udp()
		run("rewrite_payload.lua", "", "NFQ_FROM=hello NFQ_TO=goodbye")
		tx:sendto("hello world, hello", "127.0.0.1", 8003)
		assert.equal("goodbye world, goodbye", rx:recv(1))
	end)

	it("mark_by_uid.lua marks packets with their sender's uid", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 8004 -j NFQUEUE --queue-num 1")
		H.sh("iptables -t mangle -A POSTROUTING -o lo -m mark --mark 0x1fffe -j RETURN")
		H.sh("iptables -t mangle -A POSTROUTING -o lo -m mark --mark 0x10000 -j RETURN")
		local rx = H.udp("127.0.0.1", 8004)
		run("mark_by_uid.lua", "--uid-gid")
		H.sh("setpriv --reuid=65534 --regid=65534 --clear-groups "
			.. "bash -c 'echo a > /dev/udp/127.0.0.1/8004; echo b > /dev/udp/127.0.0.1/8004'")
		H.sh("bash -c 'echo c > /dev/udp/127.0.0.1/8004'")
		assert.equal(3, #rx:recv_all(0.5))
		assert.equal(2, H.rule_packets("mangle", "POSTROUTING", "0x1fffe"))
		assert.equal(1, H.rule_packets("mangle", "POSTROUTING", "0x10000"))
	end)

	it("connmark_classifier.lua needs a kernel that gives conntrack data to queues", function()
		local rc, out = H.run_nfqlua(H.root .. "/scripts/examples/connmark_classifier.lua --queue 1 --conntrack")
		if rc == 1 then
			assert.matches("CONFIG_NETFILTER_NETLINK_GLUE_CT", out)
			pending("this kernel lacks CONFIG_NETFILTER_NETLINK_GLUE_CT")
			return
		end
		error("this kernel supports conntrack on queues: extend this spec to check the classes")
	end)

	it("reorder.lua swaps packets in pairs", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 8006 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 8006), H.udp()
		run("reorder.lua")
		for i = 1, 4 do tx:sendto("p" .. i, "127.0.0.1", 8006) end
		assert.same({ "p2", "p1", "p4", "p3" }, rx:recv_all(0.5))
	end)

	it("print_and_accept.lua prints a line per packet", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 8007 -j NFQUEUE --queue-num 1")
		local rx, tx = H.udp("127.0.0.1", 8007), H.udp()
		run("print_and_accept.lua")
		tx:sendto("abc", "127.0.0.1", 8007)
		assert.equal("abc", rx:recv(1))
		d:wait_output("#1 OUTPUT      UDP packet, 31 bytes")
	end)
end)

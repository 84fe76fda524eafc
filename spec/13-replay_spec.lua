-- nfqlua --replay: captures written by tcpdump or built here, through the
-- example scripts; live traffic and its replay must agree.
local H = require "helpers.net"
local testing = require "nfq.testing"

local function le32(n)
	return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256, math.floor(n / 16777216) % 256)
end
local function le16(n) return string.char(n % 256, math.floor(n / 256) % 256) end

-- A classic pcap file of the given link type; frame i captured at
-- 1700000000 + times[i] seconds (default: i seconds and i ms).
local function pcap(linktype, frames, times)
	local out = { le32(0xa1b2c3d4), le16(2), le16(4), le32(0), le32(0), le32(65535), le32(linktype) }
	for i, f in ipairs(frames) do
		local t = times and times[i] or i + i / 1000
		local usec = math.floor((t - math.floor(t)) * 1e6 + 0.5)
		out[#out + 1] = le32(1700000000 + math.floor(t)) .. le32(usec) .. le32(#f) .. le32(#f) .. f
	end
	return H.tmpfile(table.concat(out), ".pcap")
end

-- A pcapng file: section header, one Ethernet interface, enhanced packet blocks.
local function pcapng(frames)
	local function block(kind, body)
		body = body .. string.rep("\0", (4 - #body % 4) % 4)
		return le32(kind) .. le32(#body + 12) .. body .. le32(#body + 12)
	end
	local out = { block(0x0a0d0d0a, le32(0x1a2b3c4d) .. le16(1) .. le16(0) .. le32(0xffffffff) .. le32(0xffffffff)),
		block(1, le16(1) .. le16(0) .. le32(65535)) }
	for i, f in ipairs(frames) do
		out[#out + 1] = block(6, le32(0) .. le32(0) .. le32(i) .. le32(#f) .. le32(#f) .. f)
	end
	return H.tmpfile(table.concat(out), ".pcapng")
end

local function ethernet(ip)
	local v6 = ip:byte(1) >= 0x60
	return "\2\0\0\0\0\2" .. "\2\0\0\0\0\1" .. (v6 and "\134\221" or "\8\0") .. ip
end

local function lines(out)
	local t = {}
	for l in out:gmatch("[^\n]+") do t[#t + 1] = l end
	return t
end

describe("nfqlua --replay", function()
	local drop_word = H.root .. "/scripts/examples/drop_word.lua"

	it("replays a capture built here, prints each verdict and writes the accepted packets", function()
		local frames = {
			ethernet(testing.packet { payload = "keep one" }),
			ethernet(testing.packet { payload = "DROP this" }),
			ethernet(testing.packet { src = "fd00::1", dst = "fd00::2", payload = "keep six" }),
		}
		local cap, kept = pcap(1, frames), H.tmpfile()
		local rc, out = H.run_nfqlua("--replay " .. cap .. " " .. drop_word .. " --out " .. kept)
		assert.equal(0, rc, out)
		local l = lines(out)
		assert.matches("^#1 1700000001%.001000 UDP packet, 36 bytes %-> accept$", l[2])
		assert.matches("^#2 1700000002%.002000 UDP packet, 37 bytes %-> drop$", l[3])
		assert.matches("^#3 1700000003%.003000 UDP packet, 56 bytes %-> accept$", l[4])
		assert.matches("replayed 3 packets in [%d.]+ s %(%d+ packets/s%): accept=2 drop=1 queue=0 stop=0 fallback=0", out)
		local dump = H.sh("tcpdump -r " .. kept .. " -n -A 2>/dev/null")
		assert.matches("keep one", dump)
		assert.matches("keep six", dump)
		assert.is_nil(dump:find("DROP", 1, true))
		assert.equal(2, #lines(H.sh("tcpdump -r " .. kept .. " -n 2>/dev/null")))
	end)

	it("reads pcapng, Linux cooked and raw IP captures, and skips other link types", function()
		local p = testing.packet { payload = "p" }
		local sll = "\0\0\0\1\0\6" .. "\2\0\0\0\0\9\0\0" .. "\8\0" .. p
		for _, cap in ipairs { pcapng { ethernet(p) }, pcap(113, { sll }), pcap(101, { p }) } do
			local rc, out = H.run_nfqlua("--replay " .. cap .. " " .. drop_word)
			assert.equal(0, rc, out)
			assert.matches("replayed 1 packets .* accept=1 .* skipped=0", out)
		end
		local rc, out = H.run_nfqlua("--replay " .. pcap(147, { "\1\2\3" }) .. " " .. drop_word)
		assert.equal(0, rc)
		assert.matches("replayed 0 packets .* skipped=1 %(no IPv4/IPv6 packet found; link type 147%)", out)
	end)

	it("gives get_hw, the hook, the mark and the capture time to the script", function()
		local cap = pcap(1, { ethernet(testing.packet {}) })
		local script = H.tmpfile([[return function(pkt)
			print(("hw=%q hook=%d mark=%d ts=%.3f"):format(pkt:get_hw(), pkt.hook, pkt.mark, pkt:get_timestamp()))
			pkt:accept()
		end]], ".lua")
		local rc, out = H.run_nfqlua("--replay " .. cap .. " " .. script .. " --hook output --mark 7")
		assert.equal(0, rc, out)
		assert.matches('hw="\\2\\0\\0\\0\\0\\1" hook=3 mark=7 ts=1700000001.001', out, 1, true)
	end)

	it("releases retained packets in verdict order and reports those held at the end", function()
		local p = testing.packet {}
		local script = H.root .. "/scripts/examples/reorder.lua"
		local rc, out = H.run_nfqlua("--replay " .. pcap(101, { p, p, p }) .. " " .. script)
		assert.equal(0, rc)
		local l = lines(out)
		assert.matches("^#2 ", l[1])
		assert.matches("^#1 ", l[2])
		assert.matches("^#3 .* %-> accept %(fallback%)$", l[3])
		assert.matches("fallback=1", out)
	end)

	it("re-runs repeated packets, with a loop guard", function()
		local script = H.tmpfile("return function(pkt) if pkt.mark == 0 then pkt:set_mark(1) pkt['repeat'](pkt) "
			.. "elseif pkt.id == 2 then pkt['repeat'](pkt) else pkt:accept() end end", ".lua")
		local p = testing.packet {}
		local rc, out = H.run_nfqlua("--replay " .. pcap(101, { p, p }) .. " " .. script)
		assert.equal(0, rc)
		assert.matches("#1 [%d.]+ UDP packet, 28 bytes %-> accept %(after 1 repeats%)", out)
		assert.matches("#2 repeated 8 times: counted as a drop", out)
		assert.matches("#2 [%d.]+ UDP packet, 28 bytes %-> drop %(after 8 repeats%)", out)
		assert.matches("repeat_loops=1", out)
	end)

	it("names the file and the packet when the capture is bad", function()
		local rc, out = H.run_nfqlua("--replay " .. H.tmpfile("not a capture at all", ".pcap") .. " " .. drop_word)
		assert.equal(1, rc)
		assert.matches("^nfqlua: cannot read capture '.-%.pcap': unknown file format", out)
		local good = H.read_file(pcap(101, { testing.packet {}, testing.packet {} }))
		local cut = H.tmpfile(good:sub(1, #good - 10), ".pcap")
		rc, out = H.run_nfqlua("--replay " .. cut .. " " .. drop_word)
		assert.equal(1, rc)
		assert.matches("nfqlua: " .. cut:gsub("%p", "%%%0") .. ": packet 2: truncated dump file", out)
		rc, out = H.run_nfqlua("--replay /nonexistent.pcap " .. drop_word)
		assert.equal(1, rc)
		assert.matches("cannot read capture '/nonexistent.pcap'", out)
		rc, out = H.run_nfqlua(drop_word .. " --queue 1 --out x.pcap")
		assert.equal(2, rc)
		assert.matches("go with %-%-replay", out)
	end)

	it("runs the script on the capture's clock: on_timer releases what delay.lua holds", function()
		local frames, times = {}, { 0, 0.010, 0.500, 0.502 }
		for i = 1, #times do frames[i] = testing.packet { payload = "p" .. i } end
		local rc, out = H.run_nfqlua("--replay " .. pcap(101, frames, times) .. " "
			.. H.root .. "/scripts/examples/delay.lua", "NFQ_DELAY_MS=100 ")
		assert.equal(0, rc, out)
		local l = lines(out)
		-- Timer ticks every 5 ms from the first packet: 0.502 + 0.1 waits for 0.605.
		assert.matches("^#1 1700000000%.000000 .* %-> accept %(held 0%.100 s%)$", l[1])
		assert.matches("^#2 1700000000%.010000 .* %-> accept %(held 0%.100 s%)$", l[2])
		assert.matches("^#3 1700000000%.500000 .* %-> accept %(held 0%.100 s%)$", l[3])
		assert.matches("^#4 1700000000%.502000 .* %-> accept %(held 0%.103 s%)$", l[4])
		assert.matches("accept=4 .* fallback=0", l[5])
	end)

	it("gives the fallback to what on_timer still holds a minute of capture time after the end", function()
		local script = H.tmpfile([[return {
			timer_interval = 1,
			on_packet = function(pkt) pkt:retain() end,
			on_timer = function() end,
		}]], ".lua")
		local rc, out = H.run_nfqlua("--replay " .. pcap(101, { testing.packet {} }, { 0 }) .. " " .. script)
		assert.equal(0, rc, out)
		assert.matches("^#1 .* %-> accept %(fallback%) %(held 60%.000 s%)\n", out)
	end)

	it("prints a queue verdict with bypass, the verdict being the low byte as for the kernel", function()
		local script = H.tmpfile("return function(pkt) pkt:queue(5, true) end", ".lua")
		local rc, out = H.run_nfqlua("--replay " .. pcap(101, { testing.packet {} }) .. " " .. script)
		assert.equal(0, rc, out)
		assert.matches("^#1 [%d.]+ UDP packet, 28 bytes %-> queue 5 bypass\n", out)
		assert.matches("accept=0 drop=0 queue=1 ", out)
	end)

	it("runs on_timer for at most a minute of a jump in the capture's clock, then once at its end, and says so", function()
		-- The first record stamped 0, the next 1700000000: years of 1 ms ticks.
		local script = H.tmpfile([[local held, calls = nil, 0
		return {
			timer_interval = 0.001,
			on_packet = function(pkt) if pkt.id == 1 then held = pkt:retain() else pkt:accept() end end,
			on_timer = function()
				calls = calls + 1
				if held and require("nfq").now() >= 1700000000 then held:drop() held = nil end
			end,
			on_stop = function() print("on_timer calls: " .. calls) end,
		}]], ".lua")
		local cap = pcap(101, { testing.packet {}, testing.packet {} }, { -1700000000, 0 })
		local rc, out = H.run_nfqlua("--replay " .. cap .. " " .. script, "timeout 120 ")
		assert.equal(0, rc, out)
		assert.matches("nfqlua: warning: replay: on_timer: the packets' clock jumps 1700000000.000 s before packet 2; "
			.. "on_timer ran for the first 60 s of the gap and once at its end, 1699999939999 calls skipped\n", out, 1, true)
		assert.matches("#1 0.000000 UDP packet, 28 bytes -> drop (held 1700000000.000 s)\n", out, 1, true)
		assert.matches("#2 1700000000.000000 UDP packet, 28 bytes -> accept\n", out, 1, true)
		assert.matches("on_timer calls: 60001\n", out, 1, true)
	end)

	it("logs script errors, gives those packets the fallback and goes on", function()
		local script = H.tmpfile("return function(pkt) if pkt.id <= 12 then error('no good ' .. pkt.id) end pkt:drop() end",
			".lua")
		local p = testing.packet {}
		local frames = {}
		for i = 1, 13 do frames[i] = p end
		local rc, out = H.run_nfqlua("--replay " .. pcap(101, frames) .. " " .. script .. " --fallback drop")
		assert.equal(0, rc, out)
		assert.matches("nfqlua: error: replay: script error: [^\n]*: no good 1\n", out)
		assert.matches("nfqlua: error: replay: script error: [^\n]*: no good 10\n", out)
		assert.is_nil(out:find("no good 11", 1, true))
		assert.matches("nfqlua: warning: replay: 2 more script errors not logged (only the first 10 are)\n", out, 1, true)
		assert.matches("#1 [%d.]+ UDP packet, 28 bytes %-> drop %(fallback%)\n", out)
		assert.matches("#13 [%d.]+ UDP packet, 28 bytes %-> drop\n", out)
		assert.matches("accept=0 drop=13 queue=0 stop=0 fallback=12 ", out)
	end)

	it("needs no root", function()
		local cap = pcap(101, { testing.packet {} })
		local script = H.tmpfile("return function(pkt) pkt:accept() end", ".lua")
		os.execute("chmod 644 " .. cap .. " " .. script)
		local rc, out = H.run_nfqlua("--replay " .. cap .. " " .. script,
			"setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all ")
		assert.equal(0, rc, out)
		assert.matches("accept=1", out)
	end)
end)

describe("live and replay #kernel", function()
	before_each(function() H.fresh_netns() end)

	it("give the same verdicts for the same packets", function()
		-- tcpdump sees loopback packets before INPUT, where the queue decides.
		H.sh("iptables -A INPUT -i lo -p udp --dport 9200 -j NFQUEUE --queue-num 1")
		local cap = H.tmpfile()
		H.sh("(tcpdump -i lo -U -w " .. cap .. " udp port 9200 > /dev/null 2>&1 & echo $! > " .. cap .. ".pid)")
		local script = H.tmpfile([[return function(pkt)
			local data = pkt:get_payload():sub(29)
			local verdict = data:find("7") and "drop" or "accept"
			print(data .. " " .. verdict)
			pkt[verdict](pkt)
		end]], ".lua")
		local d = H.daemon(script .. " --queue 1")
		H.wait_queue_ready(1)
		H.sleep(0.5)
		local rx, tx = H.udp("127.0.0.1", 9200), H.udp()
		for i = 1, 20 do tx:sendto("n" .. i, "127.0.0.1", 9200) end
		rx:recv_all(0.5)
		H.sh("kill -INT $(cat " .. cap .. ".pid); sleep 0.3")
		d:signal("TERM")
		assert.equal(0, d:wait())
		local live = {}
		for line in d:output():gmatch("(n%d+ %a+)\n") do live[#live + 1] = line end
		d:stop()
		local rc, out = H.run_nfqlua("--replay " .. cap .. " " .. script)
		assert.equal(0, rc, out)
		local replayed = {}
		for line in out:gmatch("(n%d+ %a+)\n") do replayed[#replayed + 1] = line end
		assert.equal(20, #live)
		assert.same(live, replayed)
		assert.matches("accept=18 drop=2", out)
	end)
end)

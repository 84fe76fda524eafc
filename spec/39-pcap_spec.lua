-- nfq.pcap: packets recorded to pcap files that tshark, tcpdump and nfqlua
-- --replay read back; rotation; nothing allocated per packet; and on real
-- traffic, 10,000 dropped packets recorded by scripts/examples/record_drops.lua,
-- a recorder that goes on across a reload, and a full disk that loses
-- records but never a verdict.
local nfq = require "nfq"
local testing = require "nfq.testing"
local H = require "helpers.net"
local batch = require "helpers.batch"

local function tmpdir()
	local dir = H.sh("mktemp -d"):gsub("%s+$", "")
	finally(function() os.execute("rm -rf '" .. dir .. "'") end)
	return dir
end

-- tshark's fields of every record, one table per packet.
local function tshark(path, fields)
	local args = {}
	for _, f in ipairs(fields) do args[#args + 1] = "-e " .. f end
	local out = H.sh(("tshark -r '%s' -T fields %s 2>/dev/null"):format(path, table.concat(args, " ")))
	local rows = {}
	for line in out:gmatch("[^\n]+") do
		local row, i = {}, 0
		for v in (line .. "\t"):gmatch("([^\t]*)\t") do
			i = i + 1
			row[fields[i]] = v
		end
		rows[#rows + 1] = row
	end
	return rows
end

local function hex(s)
	return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function unhex(s)
	return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

local function exists(path)
	local f = io.open(path)
	if f then f:close() end
	return f ~= nil
end

local function file_size(path)
	return tonumber(H.sh("stat -c %s '" .. path .. "'"):match("%d+"))
end

describe("nfq.pcap without a kernel", function()
	it("records queued packets with their time stamps, whole or cut at snaplen, and tshark reads them", function()
		local dir = tmpdir()
		-- A capture with known times, replayed: its packets carry them as the kernel's would.
		local input = assert(nfq.pcap(dir .. "/in.pcap"))
		local size
		for i = 1, 20 do
			local data = testing.packet { proto = "udp", dport = 7000 + i, payload = ("p%03d"):format(i) }
			size = #data
			assert.equal(1, nfq._C.nfq_pcap_write(input.h, data, size, size, 1700000000 + i, 250000000))
		end
		assert.is_true(input:close())
		local path = dir .. "/t.pcap"
		local script = H.tmpfile(([[
local nfq = require "nfq"
local w = assert(nfq.pcap(%q))
local short = assert(nfq.pcap(%q, { snaplen = 30 }))
return {
	on_packet = function(pkt)
		assert(w:write(pkt))
		short:write(pkt)
		pkt:drop()
	end,
	on_stop = function()
		assert(w:close())
		local s = w:stats()
		print(("stats written=%%d dropped=%%d buffered=%%d errors=%%d bytes=%%d"):format(s.written, s.dropped,
			s.buffered, s.write_errors, s.bytes))
	end,
}
]]):format(path, dir .. "/short.pcap"), ".lua")
		local rc, out = H.run_nfqlua(("--replay %s/in.pcap %s"):format(dir, script))
		assert.equal(0, rc, out)
		assert.matches("stats written=20 dropped=0 buffered=0 errors=0 bytes=" .. (24 + 20 * (16 + size)), out)
		assert.equal(24 + 20 * (16 + size), file_size(path))
		local rows = tshark(path, { "frame.time_epoch", "frame.len", "udp.dstport", "udp.payload" })
		assert.equal(20, #rows)
		for i, row in ipairs(rows) do
			assert.equal(("%d.250000000"):format(1700000000 + i), row["frame.time_epoch"])
			assert.equal(tostring(7000 + i), row["udp.dstport"])
			assert.equal(("p%03d"):format(i), unhex(row["udp.payload"]))
		end
		rows = tshark(dir .. "/short.pcap", { "frame.cap_len", "frame.len" })
		assert.same({ ["frame.cap_len"] = "30", ["frame.len"] = tostring(size) }, rows[20])
		local info = H.sh("capinfos '" .. path .. "'")
		assert.matches("nanosecond pcap", info)
		assert.matches("Raw IP", info)
	end)

	it("stamps strings, buffers and pointers with the current time", function()
		local dir = tmpdir()
		local w = assert(nfq.pcap(dir .. "/s.pcap"))
		local before = os.time()
		local data = testing.packet { proto = "udp", payload = "string" }
		assert.is_true(w:write(data))
		local r = testing.run(function(pkt)
			local b = pkt:copy()
			assert.is_true(w:write(b))
			local ptr, len = pkt:view()
			assert.is_true(w:write(ptr, len))
		end, { testing.packet { proto = "udp", payload = "buffer" } })
		assert.equal(1, #r)
		assert.is_true(w:close())
		local rows = tshark(dir .. "/s.pcap", { "frame.time_epoch", "udp.payload" })
		assert.same({ "string", "buffer", "buffer" },
			{ unhex(rows[1]["udp.payload"]), unhex(rows[2]["udp.payload"]), unhex(rows[3]["udp.payload"]) })
		for _, row in ipairs(rows) do
			local t = tonumber(row["frame.time_epoch"])
			assert.is_true(t >= before and t < os.time() + 1, row["frame.time_epoch"])
		end
	end)

	it("rotates by size as logrotate numbers files, keeping at most keep + 1, each one readable", function()
		local dir = tmpdir()
		local path = dir .. "/r.pcap"
		local w = assert(nfq.pcap(path, { max_bytes = 4096, keep = 3 }))
		for i = 1, 500 do
			assert.is_true(w:write(testing.packet { proto = "udp", payload = ("n%05d"):format(i) }))
		end
		assert.is_true(w:close())
		local s = w:stats()
		assert.equal(500, s.written)
		assert.is_true(s.rotated > 3, "rotated " .. s.rotated)
		assert.equal(table.concat({ "r.pcap", "r.pcap.1", "r.pcap.2", "r.pcap.3" }, "\n") .. "\n",
			H.sh("ls " .. dir .. " | sort"))
		-- Oldest first, the kept files hold the last records, without a gap.
		local seen = {}
		for _, name in ipairs { "r.pcap.3", "r.pcap.2", "r.pcap.1", "r.pcap" } do
			assert.is_true(file_size(dir .. "/" .. name) <= 4096, name)
			for _, row in ipairs(tshark(dir .. "/" .. name, { "udp.payload" })) do
				seen[#seen + 1] = tonumber(unhex(row["udp.payload"]):match("%d+"))
			end
		end
		assert.equal(500, seen[#seen])
		for i = 2, #seen do assert.equal(seen[i - 1] + 1, seen[i]) end
		assert.is_true(#seen > 3 * 40)

		-- Opened again (a restart), the file moves aside: nothing recorded is lost.
		local last = H.sh("tshark -r " .. path .. " -T fields -e udp.payload 2>/dev/null")
		w = assert(nfq.pcap(path, { keep = 3 }))
		assert.is_true(w:close())
		assert.equal(24, file_size(path))
		assert.equal(last, H.sh("tshark -r " .. path .. ".1 -T fields -e udp.payload 2>/dev/null"))
		-- keep = 0: one file, started over when full.
		w = assert(nfq.pcap(path, { max_bytes = 4096, keep = 0 }))
		for i = 1, 200 do w:write(testing.packet { proto = "udp", payload = ("k%05d"):format(i) }) end
		assert.is_true(w:close())
		assert.is_true(file_size(path) <= 4096)
		local rows = tshark(path, { "udp.payload" })
		assert.equal("k00200", unhex(rows[#rows]["udp.payload"]))
		assert.equal(table.concat({ "r.pcap", "r.pcap.1", "r.pcap.2", "r.pcap.3" }, "\n") .. "\n",
			H.sh("ls " .. dir .. " | sort"))
	end)

	it("shares one recorder per path, and a recorder collected by the GC still writes its packets", function()
		local dir = tmpdir()
		local path = dir .. "/g.pcap"
		local a = assert(nfq.pcap(path))
		local b = assert(nfq.pcap(path, { flush_interval = 0.05 }))
		a:write(testing.packet { proto = "udp", payload = "a" })
		b:write(testing.packet { proto = "udp", payload = "b" })
		assert.equal(2, a:stats().buffered + a:stats().written)
		assert.is_true(a:close())
		assert.equal(2, b:stats().written)
		b:write(testing.packet { proto = "udp", payload = "c" })
		b = nil -- luacheck: ignore 311
		collectgarbage()
		collectgarbage()
		H.wait_for(function() return #tshark(path, { "udp.payload" }) == 3 end, 5, "the collected recorder's packet")
	end)

	it("refuses bad arguments with one line that names them, and a file it cannot create with nil, err", function()
		local dir = tmpdir()
		local function err_of(f, ...)
			local ok, e = pcall(f, ...)
			assert.is_false(ok)
			return e
		end
		assert.matches("path must be a file name", err_of(nfq.pcap, 42))
		assert.matches("unknown option 'max_size'", err_of(nfq.pcap, dir .. "/x", { max_size = 1 }))
		assert.matches("snaplen must be an integer from 1 to 65535, got number 0",
			err_of(nfq.pcap, dir .. "/x", { snaplen = 0 }))
		assert.matches("buffer_bytes must be an integer from 131072", err_of(nfq.pcap, dir .. "/x", { buffer_bytes = 4096 }))
		assert.matches("flush_interval must be a number of seconds", err_of(nfq.pcap, dir .. "/x", { flush_interval = 0 }))
		local w, err = nfq.pcap(dir .. "/no/such/dir/x.pcap")
		assert.is_nil(w)
		assert.equal("nfq.pcap: cannot create '" .. dir .. "/no/such/dir/x.pcap': No such file or directory", err)
		w = assert(nfq.pcap(dir .. "/x.pcap"))
		assert.matches("write expects a packet, a packet buffer, a string", err_of(w.write, w, {}))
		assert.matches("a length goes with a pointer", err_of(w.write, w, 42, 1))
		testing.run(function(pkt)
			assert.matches("39%-pcap_spec.lua:%d+: nfq.pcap: this packet has no payload",
				err_of(function() w:write(pkt) end))
		end, { testing.packet {} }, { mode = nfq.COPY_META })
		assert.is_true(w:close())
		assert.is_true(w:close())
		assert.matches("the recorder of '.*' is closed", err_of(w.write, w, "x"))
	end)

	it("allocates nothing per recorded packet in JIT-compiled code", function()
		jit.flush()
		local w = assert(nfq.pcap("/dev/null", { keep = 0 }))
		local recorded = 0
		local run_batch = batch.synthetic_queue(function(pkt)
			if w:write(pkt) then recorded = recorded + 1 end
			pkt:accept()
		end, function(i) return 8000 + i end)
		local grown = batch.heap_growth(run_batch, 2000, 200000 / batch.SIZE)
		assert.is_true(grown < 16, ("the Lua heap grew by %.1f KB over 200k recorded packets"):format(grown))
		assert.is_true(recorded > 0)
		assert.is_true(w:close())
	end)
end)

describe("nfq.pcap in the daemon #kernel", function()
	H.isolated_tests()

	-- Send count UDP datagrams "<tag> NNNNN" to 127.0.0.1:port, draining the
	-- receiver (if any) as they go.
	local function send_numbered(count, port, tag, receiver, got)
		local s = H.udp()
		for i = 1, count do
			s:sendto(("%s %05d"):format(tag, i), "127.0.0.1", port)
			if receiver and i % 50 == 0 then
				for _, d in ipairs(receiver:recv_all(0)) do got[#got + 1] = d end
			end
		end
		s:close()
	end

	it("records 10,000 packets record_drops.lua dropped, which tshark, tcpdump and nfqlua --replay read back", function()
		local dir = tmpdir()
		local path = dir .. "/drops.pcap"
		H.sh("iptables -A OUTPUT -o lo -p udp -j NFQUEUE --queue-num 1")
		local d = H.daemon(H.root .. "/scripts/examples/record_drops.lua --queue 1",
			("NFQ_DROP_PORTS=7391 NFQ_RECORD=%s"):format(path))
		H.wait_queue_ready(1)
		local receiver = H.udp("127.0.0.1", 7392)
		local started = os.time()
		local got = {}
		local s = H.udp()
		for i = 1, 10000 do
			s:sendto(("drop %05d"):format(i), "127.0.0.1", 7391)
			if i % 10 == 0 then s:sendto(("pass %05d"):format(i), "127.0.0.1", 7392) end
			if i % 500 == 0 then
				for _, data in ipairs(receiver:recv_all(0)) do got[#got + 1] = data end
			end
		end
		s:close()
		for _, data in ipairs(receiver:recv_all(0.5)) do got[#got + 1] = data end
		assert.equal(1000, #got)
		d:signal("TERM")
		assert.equal(0, d:wait(20))
		assert.matches("record_drops: 10000 dropped packets recorded to " .. path:gsub("%p", "%%%0") .. ", 0 lost",
			d:output())
		local info = H.queue_info(1)
		assert.is_true(info == nil or info.queue_dropped + info.user_dropped == 0)

		local rows = tshark(path, { "frame.time_epoch", "frame.len", "ip.dst", "udp.dstport", "udp.payload" })
		assert.equal(10000, #rows)
		for i, row in ipairs(rows) do
			assert.equal(hex(("drop %05d"):format(i)), row["udp.payload"])
		end
		for _, i in ipairs { 1, 4321, 10000 } do
			assert.same({ "38", "127.0.0.1", "7391" }, { rows[i]["frame.len"], rows[i]["ip.dst"], rows[i]["udp.dstport"] })
			local t = tonumber(rows[i]["frame.time_epoch"])
			assert.is_true(t >= started and t <= os.time() + 1, "the time of recording, as OUTPUT packets carry none")
		end
		assert.equal("10000", H.sh("tcpdump -r '" .. path .. "' -n 2>/dev/null | wc -l"):match("%d+"))
		local rc, out = H.run_nfqlua(("--replay %s %s/scripts/examples/record_drops.lua"):format(path, H.root),
			("NFQ_DROP_PORTS=7391 NFQ_RECORD=%s/again.pcap "):format(dir))
		assert.equal(0, rc, out)
		assert.matches("replayed 10000 packets in [%d.]+ s %(%d+ packets/s%): accept=0 drop=10000", out)
		assert.equal(10000, #tshark(dir .. "/again.pcap", { "frame.len" }))
		assert.equal(H.sh("tshark -r '" .. path .. "' -T fields -e udp.payload 2>/dev/null"),
			H.sh("tshark -r '" .. dir .. "/again.pcap' -T fields -e udp.payload 2>/dev/null"))
	end)

	it("shares one file between two workers, and goes on in it across a reload", function()
		local dir = tmpdir()
		local path = dir .. "/all.pcap"
		local script = H.tmpfile(([[
local w = assert(require("nfq").pcap(%q))
return function(pkt) w:write(pkt) pkt:accept() end
]]):format(path), ".lua")
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7393 -j NFQUEUE --queue-balance 1:2")
		local d = H.daemon(script .. " --queue 1-2")
		H.wait_queue_ready(1)
		H.wait_queue_ready(2)
		local receiver, got = H.udp("127.0.0.1", 7393), {}
		send_numbered(100, 7393, "before", receiver, got)
		d:signal("HUP")
		d:wait_output("version 2 runs now")
		send_numbered(100, 7393, "after", receiver, got)
		for _, data in ipairs(receiver:recv_all(0.5)) do got[#got + 1] = data end
		assert.equal(200, #got)
		d:signal("TERM")
		assert.equal(0, d:wait(20))
		local rows = tshark(path, { "udp.payload" })
		assert.equal(200, #rows)
		assert.equal("before 00001", unhex(rows[1]["udp.payload"]))
		assert.equal("after 00100", unhex(rows[200]["udp.payload"]))
		assert.is_false(exists(path .. ".1"))
	end)

	it("on a full disk counts the records it lost, logs it once, and never holds back a verdict", function()
		local dir = tmpdir()
		local mnt = dir .. "/small"
		H.sh("mkdir " .. mnt .. " && mount -t tmpfs -o size=64k nfqspec-pcap " .. mnt)
		finally(function() os.execute("umount " .. mnt .. " 2>/dev/null") end)
		local path = mnt .. "/all.pcap"
		local script = H.tmpfile(([[
local w = assert(require("nfq").pcap(%q, { buffer_bytes = 131072, flush_interval = 0.05 }))
return {
	on_packet = function(pkt) w:write(pkt) pkt:accept() end,
	on_stop = function()
		w:close()
		local s = w:stats()
		io.stderr:write(("recorded written=%%d dropped=%%d errors=%%d last=%%s\n")
			:format(s.written, s.dropped, s.write_errors, s.last_error))
	end,
}
]]):format(path), ".lua")
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 7394 -j NFQUEUE --queue-num 1")
		local d = H.daemon(script .. " --queue 1")
		H.wait_queue_ready(1)
		local receiver, got = H.udp("127.0.0.1", 7394), {}
		local s = H.udp()
		local pad = ("x"):rep(200)
		for i = 1, 3000 do
			s:sendto(("%05d %s"):format(i, pad), "127.0.0.1", 7394)
			if i % 50 == 0 then
				for _, data in ipairs(receiver:recv_all(0)) do got[#got + 1] = data end
			end
		end
		s:close()
		for _, data in ipairs(receiver:recv_all(0.5)) do got[#got + 1] = data end
		assert.equal(3000, #got, "every packet got its verdict")
		local info = H.queue_info(1)
		assert.same({ 0, 0 }, { info.queue_dropped, info.user_dropped })
		d:signal("TERM")
		assert.equal(0, d:wait(20))
		local out = d:output()
		local written, dropped, errors, last = out:match("recorded written=(%d+) dropped=(%d+) errors=(%d+) last=([^\n]*)")
		written, dropped = tonumber(written), tonumber(dropped)
		assert.is_true(written > 0 and dropped > 0, out)
		assert.equal(3000, written + dropped)
		assert.is_true(tonumber(errors) >= 1)
		assert.equal("No space left on device", last)
		local _, warnings = out:gsub("cannot write: No space left on device", "")
		assert.equal(1, warnings, out)
		-- What made it to disk is whole records: every reader takes the file.
		assert.equal(written, #tshark(path, { "frame.len" }))
		assert.equal(tostring(written), H.sh("tcpdump -r '" .. path .. "' -n 2>/dev/null | wc -l"):match("%d+"))
	end)
end)

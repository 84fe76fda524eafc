-- Metrics: nfq.metric counters and gauges (in-process), and the daemon's
-- --metrics server scraped by curl, by promtool and by a real Prometheus,
-- across two workers and a reload, and in the face of bad clients.
local H = require "helpers.net"
local nfq = require "nfq"
local metric = require "nfq.metric"

local PROMETHEUS = "/usr/bin/prometheus"
local PROMTOOL = "/usr/bin/promtool"
local METRICS_PORT, PROM_PORT = 9640, 9090
local OPENMETRICS = "application/openmetrics-text; version=1.0.0"

local function exists(path)
	local f = io.open(path)
	if f then f:close() end
	return f ~= nil
end

--- The value of one sample line of an exposition (name{labels} value), or nil.
local function sample(text, series)
	local escaped = series:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?{}]", "%%%0")
	local v = text:match("\n" .. escaped .. " (%S+)\n")
	return tonumber(v)
end

--- GET http://ADDR/metrics with curl: the body and the headers.
local function scrape(addr, accept, unix_path)
	local headers = H.tmpfile("")
	local body = H.sh(("curl -s -m 5 -D %s %s %s 'http://%s/metrics'"):format(headers,
		accept and ("-H 'Accept: %s'"):format(accept) or "",
		unix_path and ("--unix-socket " .. unix_path) or "", addr))
	return body, H.read_file(headers)
end

local function promtool_check(text)
	local path = H.tmpfile(text, ".prom")
	return H.sh(("%s check metrics < %s; echo promtool=$?"):format(PROMTOOL, path))
end

--- The README's block marked <!-- illustrative: MARK -->.
local function readme_block(mark)
	local readme = assert(H.read_file(H.root .. "/README.md"))
	local at = assert(readme:find("<!-- illustrative: " .. mark .. " -->\n```", 1, true), mark)
	return readme:match("```%w*\n(.-)```", at)
end

describe("nfq.metric", function()
	it("counts into series and renders them in both formats", function()
		local c = metric.counter("spec38_requests_total", "Requests, by method.", { "method" })
		local get = c:series("GET")
		get:inc()
		get:add(2)
		c:inc("POST")
		c:inc({ "POST" }, 4)
		local g = metric.gauge("spec38_temperature_celsius", "A gauge\nwith \\ and a newline in its help.")
		g:series():set(21.5)
		g:set(nil, 22.25)
		local plain = metric.gauge("spec38_load", "Load.")
		plain:series():add(-3)
		local text, ctype = metric.render()
		assert.equal("text/plain; version=0.0.4; charset=utf-8", ctype)
		assert.equal(3, sample(text, 'spec38_requests_total{method="GET"}'))
		assert.equal(5, sample(text, 'spec38_requests_total{method="POST"}'))
		assert.equal(22.25, sample(text, "spec38_temperature_celsius"))
		assert.equal(-3, sample(text, "spec38_load"))
		assert.matches("# TYPE spec38_requests_total counter\n", text, 1, true)
		assert.matches("# HELP spec38_temperature_celsius A gauge\\nwith \\\\ and a newline in its help.\n", text, 1, true)
		assert.matches('\nnfqlua_build_info{version="' .. nfq._VERSION .. '"} 1\n', text, 1, true)
		assert.matches("promtool=0", promtool_check(text), 1, true)
		local om, om_type = metric.render("openmetrics")
		assert.equal("application/openmetrics-text; version=1.0.0; charset=utf-8", om_type)
		assert.matches("# TYPE spec38_requests counter\n", om, 1, true)
		assert.matches('\nspec38_requests_total{method="GET"} 3\n', om, 1, true)
		assert.equal("# EOF\n", om:sub(-6))
	end)

	it("escapes label values and keeps series apart by them", function()
		local c = metric.counter("spec38_escape", nil, { "a", "b" })
		c:series('x"y', "1\\2\n"):inc()
		c:series({ "x", 3 }):add(0.5)
		local text = metric.render()
		assert.equal(1, sample(text, 'spec38_escape_total{a="x\\"y",b="1\\\\2\\n"}'))
		assert.equal(0.5, sample(text, 'spec38_escape_total{a="x",b="3"}'))
	end)

	it("gives the same series to the same declaration, as a reload makes it", function()
		local first = metric.counter("spec38_kept_total", "Kept.", { "k" }):series("v")
		first:add(7)
		local again = metric.counter("spec38_kept", "Kept, said better.", { "k" }):series("v")
		again:inc()
		assert.equal(8, first:get())
		local text = metric.render()
		assert.equal(8, sample(text, 'spec38_kept_total{k="v"}'))
		assert.matches("# HELP spec38_kept_total Kept, said better.\n", text, 1, true)
	end)

	it("refuses conflicting and malformed declarations with the reason", function()
		metric.counter("spec38_conflict_total", "", { "a" })
		local cases = {
			{ function() metric.gauge("spec38_conflict", "", { "a" }) end,
				"metric 'spec38_conflict' is already declared as a counter with labels {a}: "
					.. "declare it the same way, or use another name" },
			{ function() metric.counter("spec38_conflict_total", "", { "b" }) end,
				"already declared as a counter with labels {a}" },
			{ function() metric.counter("nfqlua_mine", "") end, "are the daemon's own; use another prefix" },
			{ function() metric.gauge("spec38_g_total", "") end, "the _total suffix is for counters" },
			{ function() metric.counter("9lives", "") end, "metric name '9lives' is not valid" },
			{ function() metric.counter("spec38_l", "", { "__x" }) end, "label name '__x' is not valid" },
			{ function() metric.counter("spec38_l", "", { "a", "a" }) end, "label name 'a' is given twice" },
			{ function() metric.counter("spec38_conflict_total", "", { "a" }):series("x", "y") end,
				"metric 'spec38_conflict' has labels {a}: give 1 label value, got 2" },
			{ function() metric.counter("spec38_conflict_total", "", { "a" }):series("x"):add(-1) end,
				"counter:add takes a number >= 0, got number -1" },
			{ function() metric.counter("spec38_conflict_total", "", { "a" }):set("x", 1) end,
				"is a counter: it has inc and add, not set" },
			{ function() metric.render("json") end, "format is 'prometheus' or 'openmetrics'" },
		}
		for _, case in ipairs(cases) do
			local ok, err = pcall(case[1])
			assert.is_false(ok)
			assert.matches(case[2], err, 1, true)
			assert.matches("^[^\n]*38%-metrics_spec.lua:%d+: nfq%.metric", err)
		end
	end)

	it("counts as the README's example script says, run by nfq.testing", function()
		local testing = require "nfq.testing"
		local script = H.tmpfile(readme_block("spec/38-metrics_spec.lua runs this block with nfq.testing"), ".lua")
		local function counts()
			local text = metric.render()
			return sample(text, 'filter_packets_total{verdict="drop"}') or 0,
				sample(text, 'filter_packets_total{verdict="accept"}') or 0
		end
		local dropped, accepted = counts()
		local results = testing.run(script, {
			testing.packet { dport = 5555 },
			testing.packet { dport = 53, payload = "query" },
			testing.packet { proto = "tcp", dport = 80 },
		})
		assert.same({ "drop", "accept", "accept" },
			{ results[1].verdict, results[2].verdict, results[3].verdict })
		local now_dropped, now_accepted = counts()
		assert.equal(1, now_dropped - dropped)
		assert.equal(2, now_accepted - accepted)
		assert.equal(40, sample(metric.render(), "filter_last_packet_bytes"), "the last packet: IPv4 and TCP headers")
	end)

	it("adds to a series per packet without allocating or aborting a trace", function()
		local batch = require "helpers.batch"
		local jit_util, vmdef = require "jit.util", require "jit.vmdef"
		local s = metric.counter("spec38_hot_total", "Hot."):series()
		local g = metric.gauge("spec38_hot_gauge", "Hot."):series()
		local run_batch, keep = batch.synthetic_queue(function(pkt)
			s:inc()
			s:add(2)
			g:set(pkt:get_payload_len())
			pkt:accept()
		end, function(i) return 8000 + i end)
		jit.flush()
		for _ = 1, 2000 do run_batch() end
		local aborts = {}
		local function on_trace(what, _, func, pc, otr)
			local info = what == "abort" and jit_util.funcinfo(func, pc)
			if info and (info.source:find("nfq/metric", 1, true) or info.source:find("38-metrics", 1, true)) then
				aborts[#aborts + 1] = ("%s:%s: %s"):format(info.source, info.currentline, vmdef.traceerr[otr])
			end
		end
		jit.attach(on_trace, "trace")
		collectgarbage()
		collectgarbage("stop")
		local before = collectgarbage("count")
		for _ = 1, 1000000 / batch.SIZE do run_batch() end
		local grown = collectgarbage("count") - before
		collectgarbage("restart")
		jit.attach(on_trace)
		assert.same({}, aborts)
		assert.is_true(grown < 16, ("the Lua heap grew by %.1f KB over 1M packets"):format(grown))
		assert.is_true(s:get() >= 3 * 1000000)
		assert.is_not_nil(keep)
	end)
end)

local have_prometheus = exists(PROMETHEUS) and exists(PROMTOOL)

describe("nfq.metric in nginx #kernel", function()
	local NGINX = "/usr/sbin/nginx"
	local MODULES = { "/usr/lib/nginx/modules/ndk_http_module.so", "/usr/lib/nginx/modules/ngx_http_lua_module.so" }

	it("renders from a location, as the README shows", function()
		if not (exists(NGINX) and exists(MODULES[2])) then
			pending("nginx with its Lua module is not installed (apt-get install nginx libnginx-mod-http-lua)")
			return
		end
		H.fresh_netns()
		local dir = H.sh("mktemp -d"):gsub("%s+$", "")
		local conf = ([[
load_module %s;
load_module %s;
user root;
worker_processes 1;
pid nginx.pid;
error_log stderr notice;
events { worker_connections 64; }
http {
	access_log off;
	client_body_temp_path tmp; proxy_temp_path tmp; fastcgi_temp_path tmp; uwsgi_temp_path tmp; scgi_temp_path tmp;
	lua_package_path "%s/lua/?.lua;;";
	lua_package_cpath "%s/lua/?.so;;";
	server {
		listen 127.0.0.1:8081;
		location = /hit {
			content_by_lua_block {
				require("nfq").metric.counter("spec38_nginx_hits_total", "Requests to /hit."):series():inc()
				ngx.say("ok")
			}
		}
%s
	}
}
]]):format(MODULES[1], MODULES[2], H.root, H.root, readme_block("spec/38-metrics_spec.lua runs this block in nginx"))
		local f = assert(io.open(dir .. "/nginx.conf", "w"))
		f:write(conf)
		f:close()
		os.execute(("( setsid %s -p %s/ -c nginx.conf -g 'daemon off;' > %s/log 2>&1 & echo $! > %s/pid )")
			:format(NGINX, dir, dir, dir))
		local pid = H.wait_for(function() return tonumber(H.read_file(dir .. "/pid") or "") end, 5, "nginx to start")
		finally(function()
			os.execute(("kill -QUIT %d 2>/dev/null"):format(pid))
			pcall(H.wait_for, function() return not exists("/proc/" .. pid .. "/stat") end, 10, "nginx to exit")
			os.execute(("kill -KILL -%d 2>/dev/null; rm -rf %s"):format(pid, dir))
		end)
		H.wait_for(function() return pcall(H.sh, "curl -sf -m 2 http://127.0.0.1:8081/hit") end, 10,
			"nginx to answer; its log:\n" .. (H.read_file(dir .. "/log") or ""))
		H.sh("curl -sf -m 2 http://127.0.0.1:8081/hit")
		local headers = H.tmpfile("")
		local text = H.sh(("curl -sf -m 2 -D %s http://127.0.0.1:8081/metrics"):format(headers))
		assert.equal(2, sample(text, "spec38_nginx_hits_total"), text)
		assert.matches("Content-Type: text/plain; version=0.0.4; charset=utf-8", H.read_file(headers), 1, true)
		assert.matches("promtool=0", promtool_check(text), 1, true)
	end)
end)

--- A Prometheus server on 127.0.0.1:PROM_PORT that scrapes the daemon every second.
local function start_prometheus()
	local dir = H.sh("mktemp -d"):gsub("%s+$", "")
	local f = assert(io.open(dir .. "/prometheus.yml", "w"))
	f:write(([[
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: nfqlua
    scrape_interval: 1s
    scrape_timeout: 1s
    static_configs:
      - targets: ['127.0.0.1:%d']
]]):format(METRICS_PORT))
	f:close()
	os.execute(("( sh -c 'echo $$ > %s/pid; exec %s --config.file=%s/prometheus.yml --storage.tsdb.path=%s/data "
		.. "--web.listen-address=127.0.0.1:%d' > %s/log 2>&1 ) &"):format(dir, PROMETHEUS, dir, dir, PROM_PORT, dir))
	local p = { dir = dir }
	p.pid = H.wait_for(function()
		local s = H.read_file(dir .. "/pid")
		return s and tonumber(s:match("%d+"))
	end, 5, "prometheus to start")
	function p.stop()
		if not p.dir then return end
		os.execute("kill " .. p.pid .. " 2>/dev/null")
		pcall(H.wait_for, function() return not exists("/proc/" .. p.pid .. "/stat") end, 10, "prometheus to exit")
		os.execute("kill -KILL " .. p.pid .. " 2>/dev/null; rm -rf " .. p.dir)
		p.dir = nil
	end
	--- The value of an instant query with one result, or nil.
	function p.query(expr)
		local ok, body = pcall(H.sh, ("curl -s -m 5 -G 'http://127.0.0.1:%d/api/v1/query' --data-urlencode 'query=%s'")
			:format(PROM_PORT, expr))
		return ok and tonumber(body:match('"value":%[[%d.]+,"([^"]+)"%]')) or nil
	end
	return p
end

describe("nfqlua --metrics #kernel", function()
	H.isolated_tests()

	--- N datagrams to port 9200 spread over 127.0.0.1..16, received back.
	local function traffic(rx, n)
		local tx = H.udp()
		for i = 1, n do tx:sendto("m", "127.0.0." .. (i % 16 + 1), 9200) end
		tx:close()
		local got = 0
		H.wait_for(function()
			got = got + #rx:recv_all(0.05)
			return got >= n
		end, 10, n .. " datagrams to pass the filter")
		return got
	end

	it("serves the queues' and the script's counters to Prometheus, over two workers and a reload", function()
		if not have_prometheus then
			pending("prometheus is not installed (apt-get install prometheus)")
			return
		end
		local prom = start_prometheus()
		finally(prom.stop)
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 9200 -j NFQUEUE --queue-balance 0:1")
		local rx = H.udp("0.0.0.0", 9200)
		local script = H.tmpfile([[
local nfq = require "nfq"
local seen = nfq.metric.counter("spec_packets_total", "Packets the spec's script saw.", { "proto" })
local udp = seen:series("udp")
local version = nfq.metric.gauge("spec_script_loads", "Loads of the script, per worker.")
version:series():inc()
return function(pkt)
	udp:inc()
	pkt:accept()
end
]], ".lua")
		local d = H.daemon(("%s --queue 0-1 --metrics 127.0.0.1:%d"):format(script, METRICS_PORT))
		H.wait_queue_ready(0)
		H.wait_queue_ready(1)
		assert.equal(40, traffic(rx, 40))

		local text, headers = scrape("127.0.0.1:" .. METRICS_PORT)
		assert.matches("Content%-Type: text/plain; version=0%.0%.4; charset=utf%-8", headers)
		local q0 = sample(text, 'nfqlua_packets_received_total{queue="0"}')
		local q1 = sample(text, 'nfqlua_packets_received_total{queue="1"}')
		assert.is_true(q0 > 0 and q1 > 0, text)
		assert.equal(40, q0 + q1)
		assert.equal(40, sample(text, 'nfqlua_packets_accepted_total{queue="0"}')
			+ sample(text, 'nfqlua_packets_accepted_total{queue="1"}'))
		assert.equal(40, sample(text, 'spec_packets_total{proto="udp"}'), "both workers' cells, summed")
		assert.equal(2, sample(text, "spec_script_loads"))
		assert.equal(0, sample(text, 'nfqlua_kernel_queue_full_drops_total{queue="1"}'))
		assert.equal(1, sample(text, "nfqlua_script_version"))
		assert.matches('\nnfqlua_script_info{path="' .. script .. '"} 1\n', text, 1, true)
		assert.matches("promtool=0", promtool_check(text), 1, true)
		local om, om_headers = scrape("127.0.0.1:" .. METRICS_PORT, OPENMETRICS)
		assert.matches("Content-Type: " .. OPENMETRICS, om_headers, 1, true)
		assert.matches("# TYPE nfqlua_packets_received counter\n", om, 1, true)
		assert.equal("# EOF\n", om:sub(-6))
		-- The heap is published once a second.
		H.wait_for(function()
			return (sample(scrape("127.0.0.1:" .. METRICS_PORT), 'nfqlua_lua_heap_bytes{queue="1"}') or 0) > 10000
		end, 5, "the Lua heap gauge")

		-- The reloaded version declares the same metrics: the counts go on.
		local before = tonumber(sample(text, "nfqlua_script_loaded_timestamp_seconds"))
		d:signal("HUP")
		d:wait_output("queues 0-1: reloaded " .. script .. ": version 2 runs now")
		assert.equal(20, traffic(rx, 20))
		text = scrape("127.0.0.1:" .. METRICS_PORT)
		assert.equal(60, sample(text, 'spec_packets_total{proto="udp"}'))
		assert.equal(4, sample(text, "spec_script_loads"), "each worker loaded it twice")
		assert.equal(2, sample(text, "nfqlua_script_version"))
		assert.equal(1, sample(text, 'nfqlua_reloads_total{queue="0"}'))
		assert.equal(1, sample(text, 'nfqlua_reloads_total{queue="1"}'))
		assert.is_true(sample(text, "nfqlua_script_loaded_timestamp_seconds") >= before)

		-- Prometheus scraped the same, through its own HTTP API.
		H.wait_for(function()
			return prom.query("sum(nfqlua_packets_received_total)") == 60
				and prom.query('spec_packets_total{proto="udp"}') == 60
				and prom.query('nfqlua_build_info{version="' .. nfq._VERSION .. '"}') == 1
		end, 30, "Prometheus to scrape the counters; its log:\n" .. (H.read_file(prom.dir .. "/log") or ""))
		assert.equal(1, prom.query('up{job="nfqlua"}'))
		d:signal("TERM")
		assert.equal(0, d:wait())
	end)

	it("keeps filtering and serving while clients send garbage, nothing, or too much", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 9200 -j NFQUEUE --queue-num 0")
		local rx = H.udp("0.0.0.0", 9200)
		local script = H.tmpfile("return function(pkt) pkt:accept() end", ".lua")
		local d = H.daemon(("%s --queue 0 --metrics 127.0.0.1:%d"):format(script, METRICS_PORT))
		H.wait_queue_ready(0)
		H.wait_for(function() return pcall(H.tcp_connect, "127.0.0.1", METRICS_PORT) end, 5, "the metrics port")

		local garbage = H.tcp_connect("127.0.0.1", METRICS_PORT)
		garbage:send("NOT HTTP AT ALL\r\n\r\n")
		local answer = garbage:recv(5)
		assert.is_true(answer == "" or answer:find("^HTTP/1%.%d 400") ~= nil, answer)
		garbage:close()
		-- Binary garbage leaves the server waiting for a line's end: held like a silent client.
		local binary = H.tcp_connect("127.0.0.1", METRICS_PORT)
		binary:send("\0\1\2\255\254\r\n\r\n")
		-- A megabyte of header: an error status, or the connection closed.
		local huge = H.sh(([[python3 -c '
import socket
s = socket.create_connection(("127.0.0.1", %d))
try:
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
except OSError as e:
    print("send failed:", e)
s.settimeout(5)
try:
    print("answer:", s.recv(64))
except OSError as e:
    print("recv failed:", e)
']]):format(METRICS_PORT))
		assert.matches("answer: b'HTTP/1.1 431", huge, 1, true)
		local silent = {}
		for i = 1, 20 do silent[i] = H.tcp_connect("127.0.0.1", METRICS_PORT) end

		-- The silent connections fill the server's slots: packets still pass.
		assert.equal(30, traffic(rx, 30))
		for _, s in ipairs(silent) do s:close() end
		binary:close()
		local text
		H.wait_for(function()
			local ok, body = pcall(scrape, "127.0.0.1:" .. METRICS_PORT)
			text = ok and body
			return text and sample(text, 'nfqlua_packets_received_total{queue="0"}') == 30
		end, 15, "a scrape after the bad clients")
		assert.equal(0, sample(text, 'nfqlua_fallback_verdicts_total{queue="0"}'))
		local url = "http://127.0.0.1:" .. METRICS_PORT
		-- Prometheus keeps its connection: two scrapes over one.
		assert.matches("Re-using existing connection", H.sh(("curl -sv -o /dev/null -o /dev/null %s/metrics %s/metrics 2>&1")
			:format(url, url)), 1, true)
		assert.equal("405 404", H.sh(("curl -s -o /dev/null -w '%%{http_code} ' -X POST -d x %s/metrics; "
			.. "curl -s -o /dev/null -w '%%{http_code}' %s/"):format(url, url)))
		d:signal("TERM")
		assert.equal(0, d:wait())
	end)

	it("refuses a reload that declares a metric another way, and counts on", function()
		H.sh("iptables -A OUTPUT -o lo -p udp --dport 9200 -j NFQUEUE --queue-num 0")
		local rx = H.udp("0.0.0.0", 9200)
		local script = H.tmpfile([[
local seen = require("nfq").metric.counter("spec_seen_total", "Packets seen.", { "port" }):series("9200")
return function(pkt) seen:inc() pkt:accept() end
]], ".lua")
		local d = H.daemon(("%s --queue 0 --metrics 127.0.0.1:%d"):format(script, METRICS_PORT))
		H.wait_queue_ready(0)
		assert.equal(5, traffic(rx, 5))
		local f = assert(io.open(script, "w"))
		f:write('require("nfq").metric.gauge("spec_seen", "Now a gauge.")\nreturn function(pkt) pkt:accept() end\n')
		f:close()
		d:signal("HUP")
		d:wait_output("reload of " .. script .. " failed, version 1 keeps running: " .. script .. ":1: "
			.. "nfq.metric.gauge: metric 'spec_seen' is already declared as a counter with labels {port}")
		assert.equal(5, traffic(rx, 5))
		local text = scrape("127.0.0.1:" .. METRICS_PORT)
		assert.equal(10, sample(text, 'spec_seen_total{port="9200"}'))
		assert.equal(1, sample(text, 'nfqlua_reload_failures_total{queue="0"}'))
		assert.equal(1, sample(text, "nfqlua_script_version"))
	end)

	it("serves on IPv6, and on a unix socket (with --user) that it removes at exit and replaces when stale", function()
		local script = H.tmpfile("return function(pkt) pkt:accept() end", ".lua")
		local d = H.daemon(("%s --queue 0 --metrics '[::1]:%d'"):format(script, METRICS_PORT))
		H.wait_queue_ready(0)
		H.wait_for(function()
			return pcall(H.tcp_connect, "::1", METRICS_PORT)
		end, 5, "the IPv6 metrics port")
		assert.matches("\nnfqlua_packets_received_total{queue=\"0\"} 0\n", scrape("[::1]:" .. METRICS_PORT), 1, true)
		local refused = pcall(H.tcp_connect, "127.0.0.1", METRICS_PORT)
		assert.is_false(refused, "bound to ::1 only")
		d:signal("TERM")
		assert.equal(0, d:wait())

		local dir = H.sh("mktemp -d"):gsub("%s+$", "")
		finally(function() os.execute("rm -rf " .. dir) end)
		local path = dir .. "/nfqlua.sock"
		-- A socket file left by a daemon that was killed.
		H.sh(("python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.bind(\"%s\")'"):format(path))
		-- The daemon runs as nobody: the directory is nobody's, so that it can remove the socket.
		H.sh("chown nobody " .. dir)
		d = H.daemon(("%s --queue 0 --user nobody --metrics unix:%s"):format(script, path))
		H.wait_queue_ready(0)
		local text = H.wait_for(function()
			local ok, body = pcall(scrape, "localhost", nil, path)
			return ok and body:find("nfqlua_build_info", 1, true) and body
		end, 5, "metrics on the unix socket")
		-- Root's alone, the kernel's counters were opened before giving up root.
		assert.equal(0, sample(text, 'nfqlua_kernel_queue_full_drops_total{queue="0"}'), text)
		d:signal("TERM")
		assert.equal(0, d:wait())
		assert.is_false(exists(path), "the socket file is removed at exit")
	end)

	it("refuses an address in use or malformed, in one line, before binding the queue", function()
		local script = H.tmpfile("return function(pkt) pkt:accept() end", ".lua")
		local taken = H.tcp_listen("127.0.0.1", METRICS_PORT)
		finally(function() taken:close() end)
		local rc, out = H.run_nfqlua(("%s --queue 0 --metrics 127.0.0.1:%d"):format(script, METRICS_PORT))
		assert.equal(1, rc)
		assert.equal(("nfqlua: --metrics 127.0.0.1:%d: cannot listen: Address already in use; stop what listens "
			.. "there, or give --metrics another address\n"):format(METRICS_PORT), out)
		assert.is_nil(H.queue_info(0))
		-- A file that is not a socket is never taken for a stale one.
		local file = H.tmpfile("precious")
		rc, out = H.run_nfqlua(("%s --queue 0 --metrics unix:%s"):format(script, file))
		assert.equal(1, rc)
		assert.matches("cannot listen: Address already in use", out, 1, true)
		assert.equal("precious", H.read_file(file))
		for _, bad in ipairs { "9640", "localhost:9640", "127.0.0.1:0", "127.0.0.1:70000", "[::1]9640", "unix:" } do
			rc, out = H.run_nfqlua(("%s --queue 0 --metrics '%s'"):format(script, bad))
			assert.equal(2, rc, bad)
			assert.matches("^nfqlua: %-%-metrics [^\n]*%(see nfqlua %-%-help%)\n$", out)
		end
		rc, out = H.run_nfqlua(("%s --check --metrics 127.0.0.1:%d"):format(script, METRICS_PORT))
		assert.equal(2, rc)
		assert.matches("--metrics has no effect with --check", out, 1, true)
	end)
end)

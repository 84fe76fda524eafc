-- A DNS sinkhole and SNI filter, Pi-hole style at the packet level, from one
-- list of domains (each entry also covers its subdomains; README, Domain and
-- address sets, gives the formats: plain names, hosts files, ||name^):
--   * a DNS query over UDP for a listed name is answered NXDOMAIN by the
--     script (nfq.dns_reply, sent with nfq.send) and dropped; one over TCP
--     (port 53) is refused with TCP resets, as its stream is not ours to
--     answer in;
--   * a TLS connection whose ClientHello names a listed server (SNI), or an
--     HTTP/1.x request whose Host is listed, is refused with a TCP reset to
--     both ends (pkt:reject("tcp-reset-both"): the server, which may have
--     had the first segments, closes its side at once instead of keeping a
--     half-open connection), also when the ClientHello or request head
--     comes in several segments (the flow's stream bytes): segments before
--     the decision are accepted, as the server cannot answer a ClientHello
--     it has only part of, and the segment that completes it is the one
--     refused; later packets of a refused connection are dropped;
--   * a QUIC Initial (UDP port 443) naming a listed server is dropped, and
--     so is one whose ClientHello continues in the next packet (it cannot be
--     read from one packet), so the client falls back to TCP, where the TLS
--     check applies;
--   * a connection decided otherwise is bypassed (flow:bypass): with the
--     rules of README, Bypass, the rest of it skips the queue; without them
--     its packets are accepted one by one.
-- The list is loaded when the script loads, so a SIGHUP reload reads it
-- again before the swap; a list that cannot be read fails the reload and
-- the running version keeps its list. Counters per reason are written to
-- stderr every NFQ_BLOCKLIST_REPORT seconds when they changed, and at stop.
--
--   iptables -A OUTPUT -m mark --mark 0x1/0x1 -j RETURN   # the answers and resets sent skip the queue
--   iptables -A OUTPUT -p udp -m multiport --dports 53,443 -j NFQUEUE --queue-num 1
--   iptables -A OUTPUT -p tcp -m multiport --dports 53,80,443 -j NFQUEUE --queue-num 1
--   NFQ_BLOCKLIST=/etc/nfqlua/blocklist.txt nfqlua scripts/examples/blocklist.lua --queue 1 \
--       --send --send-mark 0x1/0x1
local nfq = require "nfq"

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local list_path = os.getenv("NFQ_BLOCKLIST") or (here .. "blocklist.txt")
local report_every = tonumber(os.getenv("NFQ_BLOCKLIST_REPORT") or "60")
local max_flows = tonumber(os.getenv("NFQ_BLOCKLIST_FLOWS") or "65536")
if not (report_every and max_flows) then
	error("blocklist: NFQ_BLOCKLIST_REPORT (seconds) and NFQ_BLOCKLIST_FLOWS (flows) must be numbers", 0)
end

local loading = os.clock()
local domains, err = nfq.domainset(list_path)
if not domains then
	error(("blocklist: %s; the running list stays (fix the file, or NFQ_BLOCKLIST)"):format(err), 0)
end
io.stderr:write(("blocklist: %d names from %s (%.2f s, %.1f MB)\n"):format(#domains, list_path,
	os.clock() - loading, domains:stats().bytes / 1048576))

-- A ClientHello or request head longer than this is let through unread.
local HEAD_BYTES = 4096
local UNDECIDED, PASS, BLOCKED = 0, 1, 2
local UNREAD = 3 -- a QUIC Initial to drop, its flow left undecided for the next one
local TLS_HANDSHAKE = 0x16

local flows = nfq.flows {
	name = "blocklist",
	max = max_flows,
	state = "struct { uint8_t verdict; }",
	stream_bytes = HEAD_BYTES,
}

local REASONS = { "dns_blocked", "dns_tcp_blocked", "tls_blocked", "http_blocked", "quic_blocked",
	"quic_unread", "dns_passed", "tls_passed", "http_passed", "quic_passed", "unread" }
local counts = {}
for _, reason in ipairs(REASONS) do counts[reason] = 0 end

local dns, tls_client_hello, http_request, quic_initial = nfq.dns, nfq.tls_client_hello, nfq.http_request,
	nfq.quic_initial
local send, dns_reply = nfq.send, nfq.dns_reply

local function count(reason) counts[reason] = counts[reason] + 1 end

local function listed(ptr, len) return len > 0 and domains:match(ptr, len) ~= nil end

-- A UDP DNS query: answered NXDOMAIN if listed. Anything else passes.
local function dns_udp(pkt)
	local q = dns(pkt)
	if q and not q:is_response() and listed(q:name_ptr()) then
		count("dns_blocked")
		pkt:drop()
		-- A query nfq.dns_reply cannot answer (not a standard query, or
		-- several questions) is dropped unanswered.
		local reply = dns_reply(pkt)
		if reply then send(reply) end
		return
	end
	if q then count("dns_passed") end
	pkt:accept()
end

-- A TCP segment to port 53 that starts a query for a listed name: both
-- ends reset.
local function dns_tcp(pkt)
	local q = dns(pkt)
	if q and not q:is_response() and listed(q:name_ptr()) then
		count("dns_tcp_blocked")
		return pkt:reject("tcp-reset-both")
	end
	pkt:accept()
end

-- What the client's first bytes decide: a ClientHello or an HTTP request head.
local function decide_stream(flow, pkt)
	local data, len = flow:stream(pkt, HEAD_BYTES)
	-- No stream buffer free (more undecided connections than the pool holds): let it through.
	if not data then count("unread") return PASS end
	if len == 0 then return UNDECIDED end
	local whole = len == HEAD_BYTES
	if data[0] == TLS_HANDSHAKE then
		local hello, why = tls_client_hello(data, len)
		if hello then
			if listed(hello:sni_ptr()) then count("tls_blocked") return BLOCKED end
			count("tls_passed")
			return PASS
		end
		if why == "incomplete" and not whole then return UNDECIDED end
	else
		local head, why = http_request(data, len)
		if head and head.has_host == 1 then
			if listed(head:host_ptr()) then count("http_blocked") return BLOCKED end
			count("http_passed")
			return PASS
		end
		if not head and why == "incomplete" and not whole then return UNDECIDED end
	end
	count("unread")
	return PASS
end

-- A QUIC datagram's first packet: a client Initial whose name decides.
local function decide_quic(pkt)
	local initial, why = quic_initial(pkt)
	if initial then
		if listed(initial:sni_ptr()) then count("quic_blocked") return BLOCKED end
		count("quic_passed")
		return PASS
	end
	if why == "incomplete" then count("quic_unread") return UNREAD end
	count("unread")
	return PASS
end

local function on_packet(pkt)
	local udp = pkt:udp()
	if udp and udp.dport ~= 443 then return dns_udp(pkt) end
	local tcp = not udp and pkt:tcp()
	if tcp and tcp.dport == 53 then return dns_tcp(pkt) end
	local flow = flows:get(pkt)
	if not flow then return pkt:accept() end
	local state = flow.state
	local verdict = state.verdict
	if verdict == UNDECIDED and flow.dir == "orig" then
		if tcp then
			verdict = decide_stream(flow, pkt)
			if verdict == BLOCKED then
				state.verdict = BLOCKED
				flow:stream_done()
				return pkt:reject("tcp-reset-both")
			end
		elseif udp then
			verdict = decide_quic(pkt)
			if verdict == UNREAD then return pkt:drop() end
		else
			verdict = PASS
		end
		state.verdict = verdict
	end
	if verdict == PASS then return flow:bypass(pkt) end
	if verdict == BLOCKED then return pkt:drop() end
	pkt:accept()
end

local function report(prefix)
	local parts = { prefix, "list=" .. list_path, "names=" .. #domains }
	for _, reason in ipairs(REASONS) do parts[#parts + 1] = reason .. "=" .. counts[reason] end
	io.stderr:write(table.concat(parts, " "), "\n")
end

local ticks, reported = 0, -1
local function total()
	local n = 0
	for _, reason in ipairs(REASONS) do n = n + counts[reason] end
	return n
end

return {
	on_packet = on_packet,
	timer_interval = 1,
	on_timer = function()
		flows:expire()
		ticks = ticks + 1
		if report_every > 0 and ticks % report_every == 0 and total() ~= reported then
			reported = total()
			report("blocklist:")
		end
	end,
	-- The counters go on across reloads.
	on_reload = function() return counts end,
	on_start = function(state)
		if state then
			for _, reason in ipairs(REASONS) do counts[reason] = state[reason] or 0 end
		end
	end,
	on_stop = function() report("blocklist: at stop:") end,
}

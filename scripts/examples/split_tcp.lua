-- Split the first data segment of each TCP connection in two: the segment is
-- dropped and sent again as two segments cut after its first NFQ_SPLIT_AT
-- bytes (default 2), so that a middlebox that reads the first segment alone
-- (a TLS ClientHello, an HTTP request line) sees only a piece of it. The
-- receiver's TCP puts the pieces back together; other segments pass as they
-- are.
--
-- nfqlua scripts/examples/split_tcp.lua --queue 1 --no-gso --send --send-mark 0x1/0x1
-- Rules: the pieces leave with the send mark and skip the queue, and
-- connbytes queues only the first packets of each connection:
--   iptables -A OUTPUT -p tcp --dport 443 -m mark --mark 0x1/0x1 -j RETURN
--   iptables -A OUTPUT -p tcp --dport 443 -m connbytes --connbytes 0:4 \
--            --connbytes-dir original --connbytes-mode packets -j NFQUEUE --queue-num 1
-- --no-gso has the kernel cut large writes into segments of the path's MTU
-- before they reach the script, so the pieces fit it too.
local nfq = require "nfq"
local ffi = require "ffi"
local bit = require "bit"

local band, bxor = bit.band, bit.bxor
local split_at = tonumber(os.getenv("NFQ_SPLIT_AT")) or 2
local SYN, ACK = 2, 16
-- Connections whose SYN went by, waiting for their first data segment, by a
-- hash of addresses and ports: up to MAX_PENDING in the current generation;
-- when it is full it becomes the old one, and the one before is forgotten.
local MAX_PENDING = 4096
local current, old, pending = {}, {}, 0

local words_t = ffi.typeof("const uint32_t *")

-- Addresses and ports folded into 32 bits; the sequence number checked with
-- it makes a wrong match between two connections practically impossible.
local function connection_key(data, tcp)
	local w = ffi.cast(words_t, data)
	local ports = tcp.sport * 65536 + tcp.dport
	if bit.rshift(data[0], 4) == 4 then
		return bxor(w[3], w[4], ports)
	end
	return bxor(w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], ports)
end

return function(pkt)
	local tcp = pkt:tcp()
	if not tcp then return pkt:accept() end
	local data, len = pkt:view()
	local key = connection_key(data, tcp)
	if band(tcp.flags, SYN + ACK) == SYN then
		if pending == MAX_PENDING then
			old, current, pending = current, {}, 0
		end
		current[key] = (tcp.seq + 1) % 2 ^ 32
		pending = pending + 1
		return pkt:accept()
	end
	local first_seq = current[key] or old[key]
	if first_seq ~= tcp.seq then return pkt:accept() end
	local _, offset = pkt:transport()
	if len - offset - tcp.header_length <= split_at then return pkt:accept() end
	current[key], old[key] = nil, nil
	local head, tail = nfq.tcp_split(pkt, split_at)
	-- Should a send fail, the original goes too: the receiver takes the
	-- bytes it gets twice once.
	if nfq.send(head) and nfq.send(tail) then
		pkt:drop()
	else
		pkt:accept()
	end
end

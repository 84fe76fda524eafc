-- The C core's queue without a kernel: the copy range it keeps, and what it
-- gives back when an allocation fails (a small C program built here, with
-- calloc wrapped, under AddressSanitizer's leak check).
local ffi = require "ffi"
local nfq = require "nfq"
local H = require "helpers.net"
local C = nfq._C

local function offline(mode, range)
	return ffi.gc(C.nfq_queue_open_offline(mode, range), C.nfq_queue_close)
end

describe("core queue", function()
	it("copies at most NFQ_MAX_COPY_RANGE bytes offline, as the kernel does, and says so in range", function()
		assert.equal(65531, C.NFQ_MAX_COPY_RANGE)
		local q = offline(C.NFQ_COPY_PACKET, 65535)
		assert.equal(65531, q.range)
		local data = string.rep("x", 65535)
		assert.equal(0, C.nfq_queue_offline_push(q, ffi.new("struct nfq_packet"), data, #data))
		assert.equal(65531, q.pkts[0].payload_len)
		assert.equal(65535, q.pkts[0].cap_len)
		assert.equal(100, offline(C.NFQ_COPY_PACKET, 100).range)
		assert.equal(0, offline(C.NFQ_COPY_META, 65535).range, "COPY_META copies nothing")
		assert.is_true(C.nfq_queue_open_offline(C.NFQ_COPY_PACKET, 65536) == nil)
	end)

	it("frees its receive buffer when the slot array cannot be allocated", function()
		local dir = H.root
		local src = H.tmpfile([[
#include <stdio.h>
#include <stdlib.h>
#include "nfq_internal.h"

void *__real_calloc(size_t n, size_t size);
static int fail_slots;

/* Refuse the batch's slot array, nothing else. */
void *__wrap_calloc(size_t n, size_t size)
{
	if (fail_slots && n == NFQ_BATCH_SLOTS && size == sizeof(struct nfq_packet))
		return NULL;
	return __real_calloc(n, size);
}

int main(void)
{
	fail_slots = 1;
	struct nfq_queue *q = nfq_queue_open_offline(NFQ_COPY_PACKET, 65535);
	fail_slots = 0;
	if (q) {
		puts("opened although the slots could not be allocated");
		return 1;
	}
	puts("refused");
	return 0;
}
]], ".c")
		local bin = src .. ".bin"
		H.sh(("cd %s && cc -g -fsanitize=address -Isrc -o %s %s src/nfq_queue.c src/nfq_packet.c src/nfq_headers.c "
			.. "-Wl,--wrap=calloc $(pkg-config --libs libmnl libnetfilter_queue) -lpthread"):format(dir, bin, src))
		local f = io.popen("ASAN_OPTIONS=detect_leaks=1 " .. bin .. " 2>&1; echo rc=$?")
		local out = f:read("*a")
		f:close()
		assert.matches("^refused\nrc=0\n$", out)
	end)
end)

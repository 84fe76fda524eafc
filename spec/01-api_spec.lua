-- Argument checking and module surface: no kernel queue needed.
local nfq = require "nfq"
local H = require "helpers.net"

describe("nfq module", function()
	it("has the constants of python-netfilterqueue and a version", function()
		assert.equal(0, nfq.COPY_NONE)
		assert.equal(1, nfq.COPY_META)
		assert.equal(2, nfq.COPY_PACKET)
		assert.matches("^%d+%.%d+%.%d+$", nfq._VERSION)
	end)

	it("returns the same module when loaded again", function()
		package.loaded.nfq = nil
		assert.equal(nfq, require "nfq")
	end)

	it("loads beside a script that declares libc names itself", function()
		local env = "LUA_PATH='lua/?.lua;;' LUA_CPATH='lua/?.so;;' "
		for _, order in ipairs {
			[[local ffi = require 'ffi'; ffi.cdef 'int poll(void *fds, unsigned long n, int t); char *strerror(int); ]]
				.. [[int read(int, void *, size_t);'; local nfq = require 'nfq'; assert(nfq.new())]],
			[[local nfq = require 'nfq'; local ffi = require 'ffi'; ]]
				.. [[ffi.cdef 'int poll(void *fds, unsigned long n, int t); char *strerror(int);'; assert(nfq.new())]],
		} do
			H.sh("cd " .. H.root .. " && " .. env .. "luajit -e \"" .. order .. "\"")
		end
	end)

	describe("new", function()
		it("rejects unknown options and bad values", function()
			assert.has_error(function() nfq.new { sock = 3 } end, "nfq: unknown new option 'sock'")
			assert.has_error(function() nfq.new(5) end, "nfq: new options must be a table, got number 5")
			assert.has_error(function() nfq.new { sockfd = -1 } end,
				"nfq: sockfd must be an integer from 0 to 2147483647, got number -1")
			assert.has_error(function() nfq.new { sockfd = 0 / 0 } end)
		end)

		it("explains a sockfd that is not a netfilter socket", function()
			local ok, err = pcall(nfq.new, { sockfd = 0 })
			assert.is_false(ok)
			assert.matches("sockfd 0 is not a usable NETLINK_NETFILTER socket", err)
			ok, err = pcall(nfq.new, { sockfd = 987654 })
			assert.is_false(ok)
			assert.matches("Bad file descriptor", err)
		end)

		it("gives a queue with a netlink fd", function()
			local q = assert(nfq.new())
			assert.is_true(q:get_fd() > 2)
			q:close()
			q:close()
			assert.has_error(function() q:get_fd() end, "nfq: this queue is closed")
		end)
	end)

	describe("bind", function()
		local q
		before_each(function() q = assert(nfq.new()) end)
		after_each(function() q:close() end)
		local cb = function() end

		it("checks the queue number without wrapping it", function()
			for _, n in ipairs { -1, 65536, 70000, 1.5, 0 / 0, math.huge } do
				assert.has_error(function() q:bind(n, cb) end,
					"nfq: queue_num must be an integer from 0 to 65535, got number " .. tostring(n))
			end
			assert.has_error(function() q:bind("1", cb) end,
				'nfq: queue_num must be an integer from 0 to 65535, got string "1"')
		end)

		it("wants a callable callback", function()
			assert.has_error(function() q:bind(1, nil) end,
				"nfq: bind: the callback must be a function or a callable table, got nil")
			assert.has_error(function() q:bind(1, {}) end,
				"nfq: bind: the callback must be a function or a callable table, got table")
		end)

		it("rejects unknown options and bad values", function()
			assert.has_error(function() q:bind(1, cb, { maxlen = 5 }) end, "nfq: unknown bind option 'maxlen'")
			assert.has_error(function() q:bind(1, cb, { max_len = 0 }) end,
				"nfq: max_len must be an integer from 1 to 4294967295, got number 0")
			assert.has_error(function() q:bind(1, cb, { range = 65536 }) end,
				"nfq: range must be an integer from 1 to 65535, got number 65536")
			assert.has_error(function() q:bind(1, cb, { mode = nfq.COPY_NONE }) end,
				"nfq: mode COPY_NONE delivers no packets (the kernel drops them); use COPY_META or COPY_PACKET")
			assert.has_error(function() q:bind(1, cb, { mode = 7 }) end,
				"nfq: mode must be nfq.COPY_META or nfq.COPY_PACKET, got number 7")
			assert.has_error(function() q:bind(1, cb, { fallback = "reject" }) end,
				[[nfq: fallback must be "accept" or "drop", got string "reject"]])
			assert.has_error(function() q:bind(1, cb, { sock_len = -5 }) end)
		end)

		it("shows a wrong value quoted, with its type", function()
			assert.has_error(function() q:bind(1, cb, { gso = "yes" }) end, 'nfq: gso must be true or false, got string "yes"')
			assert.has_error(function() q:bind(1, "cb") end,
				'nfq: bind: the callback must be a function or a callable table, got string "cb"')
			assert.has_error(function() q:bind(1, cb, { mode = "packet" }) end,
				'nfq: mode must be nfq.COPY_META or nfq.COPY_PACKET, got string "packet"')
			assert.has_error(function() q:bind(1, cb, { max_len = true }) end,
				"nfq: max_len must be an integer from 1 to 4294967295, got boolean true")
			assert.has_error(function() q:set_callback("a\nb") end,
				'nfq: set_callback: the callback must be a function or a callable table, got string "a\\nb"')
			assert.has_error(function() q:bind(1, cb, { range = string.rep("9", 50) }) end,
				'nfq: range must be an integer from 1 to 65535, got string "' .. string.rep("9", 40) .. '"... (50 bytes)')
		end)

		it("refuses to run an unbound queue, and unbinds twice quietly", function()
			assert.has_error(function() q:run(false) end, "nfq: run: the queue is not bound; call q:bind() first")
			assert.is_true(q:unbind())
			assert.is_true(q:unbind())
		end)
	end)

	describe("packet methods", function()
		it("show a wrong value quoted, with its type", function()
			local testing = require "nfq.testing"
			testing.run(function(pkt)
				assert.has_error(function() pkt:set_mark("5") end,
					'nfq: mark must be an integer from 0 to 4294967295, got string "5"')
				assert.has_error(function() pkt:set_mark(-1) end,
					"nfq: mark must be an integer from 0 to 4294967295, got number -1")
				assert.has_error(function() pkt:queue(70000) end,
					"nfq: queue_num must be an integer from 0 to 65535, got number 70000")
				assert.has_error(function() pkt:queue(1.5) end, "nfq: queue_num must be an integer from 0 to 65535, got number 1.5")
				assert.has_error(function() pkt:set_payload(5) end,
					"nfq: set_payload expects a string or a packet buffer, got number 5")
				assert.has_error(function() pkt:set_payload(nil) end,
					"nfq: set_payload expects a string or a packet buffer, got nil")
				pkt:accept()
			end, { testing.packet {} })
		end)
	end)
end)

-- busted output handler: one TAP-like line per test, failure details, and
-- "N passed, N failed" as the last line. Errors outside tests (a spec file
-- that does not load) count as failures.
return function()
	local busted = require "busted"
	local handler = require "busted.outputHandlers.base"()
	local counter = 0

	local function show_failure(t)
		local message = t.message
		if type(message) ~= "string" then message = tostring(message) end
		local trace = t.element and t.element.trace
		print(("not ok %d - %s"):format(counter, t.name or "?"))
		if trace and trace.short_src then
			print(("# %s @ %s"):format(trace.short_src, tostring(trace.currentline)))
		end
		print("# " .. message:gsub("\n", "\n# "))
	end

	handler.testEnd = function(_, _, status)
		counter = counter + 1
		if status == "success" then
			print(("ok %d - %s"):format(counter, handler.successes[#handler.successes].name))
		elseif status == "pending" then
			local t = handler.pendings[#handler.pendings]
			print(("ok %d - # SKIP %s: %s"):format(counter, t.name, tostring(t.message)))
		elseif status == "failure" then
			show_failure(handler.failures[#handler.failures])
		elseif status == "error" then
			show_failure(handler.errors[#handler.errors])
		end
		io.flush()
		return nil, true
	end

	handler.error = function(element)
		if element.descriptor ~= "it" then
			counter = counter + 1
			show_failure(handler.errors[#handler.errors])
		end
		return nil, true
	end

	handler.suiteEnd = function()
		local failed = #handler.failures + #handler.errors
		local line = ("%d passed, %d failed"):format(#handler.successes, failed)
		if #handler.pendings > 0 then
			line = line .. (", %d skipped"):format(#handler.pendings)
		end
		print(line)
		io.flush()
		return nil, true
	end

	busted.subscribe({ "test", "end" }, handler.testEnd, { predicate = handler.cancelOnPending })
	busted.subscribe({ "error" }, handler.error)
	busted.subscribe({ "suite", "end" }, handler.suiteEnd)
	return handler
end

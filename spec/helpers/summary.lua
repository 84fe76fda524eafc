-- busted output handler: TAP lines, then "N passed, N failed" as the last line.
return function(options)
	local busted = require "busted"
	local handler = require "busted.outputHandlers.TAP"(options)
	busted.subscribe({ "suite", "end" }, function()
		local failed = #handler.failures + #handler.errors
		local line = ("%d passed, %d failed"):format(#handler.successes, failed)
		if #handler.pendings > 0 then
			line = line .. (", %d skipped"):format(#handler.pendings)
		end
		io.write(line, "\n")
		io.flush()
		return nil, true
	end)
	return handler
end

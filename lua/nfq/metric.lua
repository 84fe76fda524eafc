--- nfq.metric: counters and gauges a script defines, scraped by Prometheus.
--
-- Design: a metric (family) is declared once, at load time, in the C
-- registry (src/nfq_metrics.c), which outlives the script's Lua state: a
-- reload that declares it again, the same way, gets the same series and
-- values. A series handle, h:series("dns"), points at this worker's cell of
-- the series; its methods are plain FFI writes to that cell, no lock and no
-- allocation, so the per-packet path keeps handles made at load. A scrape
-- (the daemon's --metrics, or metric.render()) sums every worker's cells.
local ffi = require "ffi"
require "nfq.cdef"

local type, error, tostring = type, error, tostring
local setmetatable, concat = setmetatable, table.concat
local ffi_string, ffi_cast = ffi.string, ffi.cast

-- Metatypes can be set once per Lua state: a second load hands back the first.
local registry = debug.getregistry()
if registry["nfq.metric"] then
	return registry["nfq.metric"]
end

local _M = {}

-- The core's namespace, found by the nfq module; looked up at the first
-- declaration, so that nfq can hook this module in without a cycle.
local C
local function core()
	C = C or require("nfq")._C
	return C
end

local KINDS = { counter = 0, gauge = 1 }
local MAX_LABELS = 8
local CONTENT_TYPES = {
	[0] = "text/plain; version=0.0.4; charset=utf-8",
	[1] = "application/openmetrics-text; version=1.0.0; charset=utf-8",
}

local errbuf = ffi.new("char[256]")
local render_len = ffi.new("size_t[1]")
local counter_ptr_t = ffi.typeof("struct nfq_metric_counter *")
local gauge_ptr_t = ffi.typeof("struct nfq_metric_gauge *")

local function bad_amount(what, n)
	error(("nfq.metric: %s takes a number%s, got %s %s"):format(what, what == "counter:add" and " >= 0" or "",
		type(n), tostring(n)), 3)
end

--- A counter's series: inc() adds 1, add(n) adds n >= 0; value() is this
-- worker's part of it.
local Counter = {}
function Counter:inc()
	self.value = self.value + 1
end
function Counter:add(n)
	if type(n) ~= "number" or n ~= n or n < 0 then bad_amount("counter:add", n) end
	self.value = self.value + n
end
function Counter:get()
	return self.value
end
ffi.metatype("struct nfq_metric_counter", { __index = Counter })

--- A gauge's series: set(v), inc(), dec(), add(n); the scrape sums every
-- worker's value, so with several workers each sets its own part.
local Gauge = {}
function Gauge:set(v)
	if type(v) ~= "number" then bad_amount("gauge:set", v) end
	self.value = v
end
function Gauge:inc()
	self.value = self.value + 1
end
function Gauge:dec()
	self.value = self.value - 1
end
function Gauge:add(n)
	if type(n) ~= "number" then bad_amount("gauge:add", n) end
	self.value = self.value + n
end
function Gauge:get()
	return self.value
end
ffi.metatype("struct nfq_metric_gauge", { __index = Gauge })

local Family = {}
Family.__index = Family

local function label_value(v, family, level)
	local t = type(v)
	if t == "string" then return v end
	if t == "number" then return tostring(v) end
	error(("nfq.metric: %s: label values are strings or numbers, got %s"):format(family.name, t), level + 1)
end

-- The series for a list of label values (or none): made in C, then cached.
local function series_of(family, values, level)
	local n = values and #values or 0
	local array = ffi.new("const char *[?]", n + 1)
	local keep = {}
	for i = 1, n do
		keep[i] = label_value(values[i], family, level + 1)
		array[i - 1] = keep[i]
	end
	local cell = core().nfq_metric_series(family.index, array, n, errbuf, 256)
	if cell == nil then
		error("nfq.metric: " .. ffi_string(errbuf), level + 1)
	end
	return ffi_cast(family.ptr_t, cell)
end

--- The series with these label values, as h:series("dns") or
-- h:series("dns", "udp") or h:series({"dns", "udp"}): a handle to keep
-- (it allocates nothing when used).
function Family:series(...)
	local values = ...
	if type(values) ~= "table" then values = { ... } end
	local s = series_of(self, values, 2)
	return s
end

-- A series found by its label values: a string for one label, a list for
-- several, nil for none. One label's string is its own cache key.
local function cached(self, values)
	local key = values
	if type(values) == "table" then
		key = concat(values, "\0")
	elseif values == nil then
		key = ""
	end
	local s = self.cache[key]
	if not s then
		s = series_of(self, type(values) == "table" and values or values ~= nil and { values } or nil, 3)
		self.cache[key] = s
	end
	return s
end

--- h:inc(values [, n]): add n (default 1) to the series with these label
-- values (a string for one label, a list for several, nil for none).
function Family:inc(values, n)
	local s = cached(self, values)
	if n == nil then s:inc() else s:add(n) end
end

--- Gauges: h:set(values, v), h:dec(values [, n]).
function Family:set(values, v)
	if self.kind ~= "gauge" then error("nfq.metric: " .. self.name .. " is a counter: it has inc and add, not set", 2) end
	cached(self, values):set(v)
end

function Family:dec(values, n)
	if self.kind ~= "gauge" then error("nfq.metric: " .. self.name .. " is a counter: it only goes up", 2) end
	cached(self, values):add(-(n or 1))
end

local function declare(kind, name, help, labels)
	if type(name) ~= "string" then
		error(("nfq.metric.%s: the name must be a string, got %s"):format(kind, type(name)), 3)
	end
	if help ~= nil and type(help) ~= "string" then
		error(("nfq.metric.%s: %s: the help must be a string, got %s"):format(kind, name, type(help)), 3)
	end
	if labels ~= nil and type(labels) ~= "table" then
		error(("nfq.metric.%s: %s: the labels must be a list of names, got %s"):format(kind, name, type(labels)), 3)
	end
	local n = labels and #labels or 0
	if n > MAX_LABELS then
		error(("nfq.metric.%s: %s: at most %d labels, got %d"):format(kind, name, MAX_LABELS, n), 3)
	end
	local array = ffi.new("const char *[?]", n + 1)
	for i = 1, n do
		if type(labels[i]) ~= "string" then
			error(("nfq.metric.%s: %s: label names are strings, got %s"):format(kind, name, type(labels[i])), 3)
		end
		array[i - 1] = labels[i]
	end
	local index = core().nfq_metric_declare(KINDS[kind], name, help, array, n, errbuf, 256)
	if index < 0 then
		error(("nfq.metric.%s: %s"):format(kind, ffi_string(errbuf)), 3)
	end
	local names = {}
	for i = 1, n do names[i] = labels[i] end
	return setmetatable({
		name = name, kind = kind, labels = names, index = index, cache = {},
		ptr_t = kind == "counter" and counter_ptr_t or gauge_ptr_t,
	}, Family)
end

--- nfq.metric.counter(name, help, {label names}): a counter (name ending in
-- _total, added when missing). The same declaration again, as after a
-- reload, returns the same metric; another kind or label set is an error.
function _M.counter(name, help, labels)
	local family = declare("counter", name, help, labels)
	return family
end

--- nfq.metric.gauge(name, help, {label names}): a gauge.
function _M.gauge(name, help, labels)
	local family = declare("gauge", name, help, labels)
	return family
end

--- Every metric of this process as text: format "openmetrics", or
-- "prometheus" (the text format 0.0.4, the default). Returns the text and
-- its Content-Type, for an HTTP handler (nginx) to serve.
function _M.render(format)
	local f = 0
	if format == "openmetrics" then
		f = 1
	elseif format ~= nil and format ~= "prometheus" then
		error(("nfq.metric.render: format is 'prometheus' or 'openmetrics', got %s"):format(tostring(format)), 2)
	end
	local c = core()
	local text = c.nfq_metrics_render(f, render_len)
	if text == nil then return nil, "nfq.metric.render: out of memory" end
	local s = ffi_string(text, render_len[0])
	c.nfq_metrics_free(text)
	return s, CONTENT_TYPES[f]
end

registry["nfq.metric"] = _M
return _M

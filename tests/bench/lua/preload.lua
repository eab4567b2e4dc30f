-- Exactly $BENCH_LIMIT POSTs (post.lua's request), then stop once all of
-- them are answered. Needs one wrk thread (-t1). Connections that would send
-- more meanwhile send GET /health/live instead, which is not counted: a
-- submit answers 202 (or an error), never 200.
local limit = tonumber(os.getenv("BENCH_LIMIT"))
-- wrk calls request() once on the first thread before the run to check it
-- (script_verify_request) and never sends that one: start at -1. bench.py
-- checks the exact count afterwards, so a wrk that behaves otherwise fails
-- loudly instead of preloading the wrong number.
local issued = -1
local answered = 0
local submit, filler
statuses = {}

function init(args)
  submit = wrk.format(nil, nil, nil, nil)
  filler = wrk.format("GET", "/health/live", {}, "")
end

function request()
  issued = issued + 1
  if issued <= limit then return submit end
  return filler
end

function response(status, headers, body)
  if status == 200 then return end
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
  answered = answered + 1
  if answered >= limit then wrk.thread:stop() end
end

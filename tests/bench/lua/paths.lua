-- $BENCH_LIMIT GETs, each to a path never used before, alternating
-- GET /api/v1/status/<random UUID v4> and GET /no/such/<n>; stops once that
-- many are answered. Checks that per-path data does not pile up anywhere
-- (metric labels, caches). Needs one wrk thread (-t1).
local limit = tonumber(os.getenv("BENCH_LIMIT"))
local n = 0
local answered = 0
statuses = {}
math.randomseed(tonumber(os.getenv("BENCH_SEED") or os.time()))
local r = math.random

local function uuid4()
  return string.format("%08x-%04x-4%03x-%x%03x-%06x%06x",
    r(0, 0xffffffff), r(0, 0xffff), r(0, 0xfff), r(8, 11), r(0, 0xfff), r(0, 0xffffff), r(0, 0xffffff))
end

function request()
  n = n + 1
  if n % 2 == 1 then
    return wrk.format("GET", "/api/v1/status/" .. uuid4(), nil, "")
  end
  return wrk.format("GET", "/no/such/" .. n, nil, "")
end

function response(status, headers, body)
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
  answered = answered + 1
  if answered >= limit then wrk.thread:stop() end
end

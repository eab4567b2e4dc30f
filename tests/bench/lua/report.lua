-- Appended to every wrk script of the benchmark: a `done` hook printing one
-- machine-readable line (latencies in microseconds) that bench.py parses,
-- plus the per-status counts of scripts that define `statuses`.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local statuses = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    if type(s) == "table" then
      for k, v in pairs(s) do statuses[k] = (statuses[k] or 0) + v end
    end
  end
  local parts = {}
  for k, v in pairs(statuses) do
    parts[#parts + 1] = string.format('"%s":%d', k, v)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d,' ..
    '"mean":%.1f,"max":%d,"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,' ..
    '"err_timeout":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout, table.concat(parts, ",")))
end

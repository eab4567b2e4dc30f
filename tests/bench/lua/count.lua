-- Count responses by status code (read by report.lua's `done`). Costs a
-- little throughput: use it where the status itself is what is checked.
statuses = {}

function response(status, headers, body)
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
end

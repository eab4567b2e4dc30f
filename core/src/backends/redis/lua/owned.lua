local function owned(stream, group, consumer, id, deliveries)
  local p = redis.pcall('XPENDING', stream, group, id, id, 1)
  if type(p) ~= 'table' or p.err or #p == 0 then return false end
  return p[1][2] == consumer and tonumber(p[1][4]) == tonumber(deliveries)
end

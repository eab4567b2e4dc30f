if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
if #e > 0 then
  local f = e[1][2]
  local before = 0
  local out = {}
  for i = 1, #f, 2 do
    if f[i] == 'attempts' then
      before = tonumber(f[i + 1]) or 0
    else
      out[#out + 1] = f[i]
      out[#out + 1] = f[i + 1]
    end
  end
  out[#out + 1] = 'attempts'
  out[#out + 1] = string.format('%d', before + tonumber(ARGV[4]))
  local delay = tonumber(ARGV[5])
  if delay <= 0 then
    redis.call('XADD', KEYS[1], '*', unpack(out))
  else
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    -- The original entry id makes the member unique.
    table.insert(out, 1, ARGV[3])
    redis.call('ZADD', KEYS[2], string.format('%.0f', now + delay), cmsgpack.pack(out))
  end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1

local stream, delayed = KEYS[1], KEYS[2]
local group, consumer = ARGV[1], ARGV[2]
local want = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', string.format('%.0f', now),
  'LIMIT', 0, tonumber(ARGV[6]))
for _, m in ipairs(due) do
  local f = cmsgpack.unpack(m)
  table.remove(f, 1)
  redis.call('XADD', stream, '*', unpack(f))
  redis.call('ZREM', delayed, m)
end
local next_due = -1
local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
if #first == 2 then next_due = math.max(0, tonumber(first[2]) - now) end
local got = {}
local function take(entries)
  for _, e in ipairs(entries) do
    if e[2] then
      got[#got + 1] = e
    else
      -- Pending but deleted (trimmed by someone else): nothing to deliver.
      redis.call('XACK', stream, group, e[1])
    end
  end
end
if ARGV[5] == '1' then
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want,
    'STREAMS', stream, '0')
  if r and r[1] then take(r[1][2]) end
end
local cursor = '0-0'
local rounds = 0
while #got < want and rounds < 10 do
  local r = redis.call('XAUTOCLAIM', stream, group, consumer, ARGV[3], cursor,
    'COUNT', want - #got)
  take(r[2])
  cursor = r[1]
  rounds = rounds + 1
  if cursor == '0-0' then break end
end
local out = {}
for i, e in ipairs(got) do
  local p = redis.call('XPENDING', stream, group, e[1], e[1], 1)
  local n = 1
  if p[1] then n = p[1][4] end
  out[i] = {e[1], n, e[2]}
end
return {next_due, out}

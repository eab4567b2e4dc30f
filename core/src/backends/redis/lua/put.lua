local current = redis.call('GET', KEYS[1])
if current then
  local ok, rec = pcall(cjson.decode, current)
  if ok and type(rec) == 'table' and (rec.status == 'COMPLETED'
      or rec.status == 'FAILED' or rec.status == 'TIMEOUT') then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if KEYS[2] then
  redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[2])
  if ARGV[7] ~= '' then redis.call('SET', KEYS[3], ARGV[7], 'PX', ARGV[2]) end
end
if ARGV[3] == '1' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1

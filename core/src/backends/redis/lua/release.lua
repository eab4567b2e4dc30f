local v = redis.call('GET', KEYS[1])
if v and string.find(v, '\n' .. ARGV[1], 1, true) then return redis.call('DEL', KEYS[1]) end
return 0

local len = redis.call('XLEN', KEYS[1])
local pending = 0
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(p) == 'table' and not p.err then pending = tonumber(p[1]) or 0 end
return {len, pending, redis.call('ZCARD', KEYS[2])}

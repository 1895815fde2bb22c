"""Lua scripts of the Redis backend: each makes one layer operation one round trip.

They take the time from Redis (``TIME``) so that stream ids, trimming and
group scores all use the broker's clock, never a client's. Scripts that read
``TIME`` and then write are replicated by effects, the default since Redis 5,
and ``XTRIM MINID`` needs Redis 6.2: our floor.
"""

from __future__ import annotations

from typing import Final

# KEYS: destination streams.
# ARGV: expiry_ms, key_ttl_ms, n_values, <values...>, then per key:
#       capacity, n_fields, (field name, value index) * n_fields
# Field values are deduplicated into the values table so that a group_send to
# 1,000 streams ships its message body once, not 1,000 times.
# Expired entries are trimmed only when a stream looks full: the pop trims
# them anyway, so the common send is XLEN + XADD + PEXPIRE.
# Returns: {added_1 .. added_n (1/0), trimmed_expired_total}
APPEND: Final = """
local ttl = tonumber(ARGV[2])
local nvalues = tonumber(ARGV[3])
local pos = 4 + nvalues
local out = {}
local expired = 0
local minid = nil
for i, key in ipairs(KEYS) do
  local cap = tonumber(ARGV[pos])
  local nf = tonumber(ARGV[pos + 1])
  pos = pos + 2
  local len = redis.call('XLEN', key)
  if len >= cap then
    if minid == nil then
      local t = redis.call('TIME')
      local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      minid = tostring(now - tonumber(ARGV[1]))
    end
    local trimmed = redis.call('XTRIM', key, 'MINID', minid)
    expired = expired + trimmed
    len = len - trimmed
  end
  if len < cap then
    local args = {'XADD', key, '*'}
    for j = 1, nf do
      args[#args + 1] = ARGV[pos]
      args[#args + 1] = ARGV[3 + tonumber(ARGV[pos + 1])]
      pos = pos + 2
    end
    redis.call(unpack(args))
    redis.call('PEXPIRE', key, ttl)
    out[i] = 1
  else
    pos = pos + 2 * nf
    out[i] = 0
  end
end
out[#KEYS + 1] = expired
return out
"""

# KEYS[1]: stream. ARGV: count, expiry_ms.
# Trims expired entries, then removes and returns up to `count` entries.
# Returns: {now_ms, trimmed_expired, {{id, {f, v, ...}}, ...}}
POP: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('XTRIM', KEYS[1], 'MINID', tostring(now - tonumber(ARGV[2])))
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[1])
if #entries > 0 then
  local ids = {}
  for i, e in ipairs(entries) do ids[i] = e[1] end
  redis.call('XDEL', KEYS[1], unpack(ids))
end
return {now, expired, entries}
"""

# KEYS[1]: group set. ARGV: channel, group_expiry_ms.
GROUP_ADD: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return now
"""

# KEYS[1]: group set. ARGV: group_expiry_ms. Drops stale members, returns the rest.
GROUP_MEMBERS: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. tostring(now - tonumber(ARGV[1])))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

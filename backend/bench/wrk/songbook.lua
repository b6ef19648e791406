-- The requests of `make bench`, chosen by BENCH_MODE, and a report wrk prints as one JSON line.
--   get       GET /songs/{id}, random ids in 1..SONGS_N
--   list      GET /songs?limit=50
--   search    GET /songs?q=WORD&limit=50, a word from a short list
--   post      POST /songs, a new song each time
--   post-key  the same with Authorization: Bearer BENCH_KEY and a new Idempotency-Key each time
--   post-auth the same with Authorization: Bearer BENCH_KEY only (what the key costs apart)
local mode = os.getenv("BENCH_MODE") or "get"
local n = tonumber(os.getenv("SONGS_N") or "100000")
local key = os.getenv("BENCH_KEY") or ""
local words = {"love", "night", "blue", "heart", "dream", "fire", "rain", "song", "moon", "road"}
-- Names unique across runs and connections: a catalog that refuses duplicates answers 201 throughout.
local run = tostring(os.time()) .. "-" .. tostring(math.random(1, 1000000000))
local i = 0

request = function()
  i = i + 1
  if mode == "get" then
    return wrk.format("GET", "/songs/" .. math.random(1, n))
  elseif mode == "list" then
    return wrk.format("GET", "/songs?limit=50")
  elseif mode == "search" then
    return wrk.format("GET", "/songs?limit=50&q=" .. words[math.random(1, #words)])
  end
  local body = '{"name":"Bench ' .. run .. "-" .. i .. '","artist":"Artist ' .. (i % 997) .. '"}'
  local headers = {["Content-Type"] = "application/json"}
  if mode == "post-key" or mode == "post-auth" then
    headers["Authorization"] = "Bearer " .. key
  end
  if mode == "post-key" then
    headers["Idempotency-Key"] = run .. "-" .. i
  end
  return wrk.format("POST", "/songs", headers, body)
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "p50_ms": %.3f, "p99_ms": %.3f, "status_errors": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    errors.status, errors.connect + errors.read + errors.write + errors.timeout))
end

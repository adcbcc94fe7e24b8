-- wrk script for bench/run.  Configured through the environment so the
-- same file drives every case (wrk runs it once per thread and once more
-- for done()):
--   BENCH_KEY   Authorization header value (sent to nginx too, so every
--               case sends the same request headers)
--   BENCH_MODE  get | post | patch
--   BENCH_IDS   patch: file with one session id per line; requests cycle
--               through them, each setting a new title
-- GET and POST build one static request (no request() function), so
-- wrk's per-request cost is the same as for a plain `wrk URL`.

local mode = os.getenv("BENCH_MODE") or "get"
local key = os.getenv("BENCH_KEY") or ""

wrk.headers["Authorization"] = key

if mode == "post" then
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"title":"bench","tags":["a","b"]}'
elseif mode == "patch" then
  local reqs = {}
  local n, i = 0, 0

  function init(args)
    local f = assert(io.open(os.getenv("BENCH_IDS"), "r"))
    local hdr = { ["Authorization"] = key, ["Content-Type"] = "application/json" }
    for id in f:lines() do
      if #id > 0 then
        n = n + 1
        -- two titles per id, so consecutive patches of an id really change it
        reqs[n] = wrk.format("PATCH", "/v1/sessions/" .. id, hdr,
                             '{"title":"bench patch ' .. n .. 'a"}')
        reqs[n + 100000000] = wrk.format("PATCH", "/v1/sessions/" .. id, hdr,
                             '{"title":"bench patch ' .. n .. 'b"}')
      end
    end
    f:close()
    assert(n > 0, "BENCH_IDS is empty")
  end

  function request()
    i = i + 1
    local k = (i - 1) % n + 1
    if math.floor((i - 1) / n) % 2 == 1 then k = k + 100000000 end
    return reqs[k]
  end
end

-- one machine-readable line; bench/run parses it
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d bytes=%d p50_us=%.1f p99_us=%.1f mean_us=%.1f max_us=%d"
      .. " err_status=%d err_connect=%d err_read=%d err_write=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end

-- wrk script for benchmarks/service.py: POST identify requests with bodies read from files.
-- Arguments after "--": a file listing one body file per line, and the body's content type.
-- Prints one JSON line in done(): requests, seconds, errors and latency percentiles (ms).
local bodies = {}
local n = 0

function init(args)
  local list = assert(io.open(args[1], "r"))
  for path in list:lines() do
    local f = assert(io.open(path, "rb"))
    bodies[#bodies + 1] = f:read("*a")
    f:close()
  end
  list:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = args[2]
  n = math.random(#bodies)
end

function request()
  n = n % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[n])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50": %.3f, "p99": %.3f, "p999": %.3f, "max": %.3f}\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    latency.max / 1000))
end

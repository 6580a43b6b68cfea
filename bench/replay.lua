-- wrk script: replay pre-signed Stripe deliveries, each request once.
-- bench/run.py writes one file per wrk thread (<prefix>.<n>), one delivery per line:
-- "<Stripe-Signature>\t<raw JSON body>". Signing happens beforehand, in Python, because
-- wrk's Lua has no HMAC; the benchmark server accepts old timestamps for that reason.
-- WRK_DELAY_MS paces each connection for fixed-rate (latency) runs.

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local requests = {}
local position = 0
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0")
-- WRK_ONCE=1: stop this thread when its file is used up, instead of repeating it.
local once = os.getenv("WRK_ONCE") == "1"

function init(args)
  local path = args[1] .. "." .. tid
  for line in io.lines(path) do
    local signature, body = line:match("^([^\t]*)\t(.*)$")
    requests[#requests + 1] = wrk.format("POST", "/webhook", {
      ["Stripe-Signature"] = signature,
      ["Content-Type"] = "application/json",
    }, body)
  end
end

function request()
  position = position + 1
  if position > #requests then
    if once then
      wrk.thread:stop()
      position = #requests
    else
      position = 1 -- ran out: repeats are duplicates
    end
  end
  return requests[position]
end

function delay()
  return delay_ms
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"non2xx":%d,"errors":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end

-- wrk script for bench/pipeline.py: POST /v1/feedback with realistic texts (one JSON-escaped
-- description per line of $FEEDBACK_TEXTS) and a new customer each time. With
-- $FEEDBACK_DELAY_MS each connection waits that long between requests (a paced load: the
-- rate is about connections * 1000 / (delay + latency)). Prints one JSON line of figures.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local texts = {}
for line in io.lines(os.getenv("FEEDBACK_TEXTS")) do
  texts[#texts + 1] = line
end
local pause = tonumber(os.getenv("FEEDBACK_DELAY_MS") or "0")
local counter = 0
local seed = 0

setup = function(thread)
  seed = seed + 1
  thread:set("thread_seed", seed)
end

init = function(args)
  counter = (thread_seed or 1) * 100000000
end

request = function()
  counter = counter + 1
  local phone = string.format("13%09d", (counter * 7919) % 1000000000)
  local body = '{"channel":"web_form","description":' .. texts[counter % #texts + 1] ..
    ',"customer":{"phone":"' .. phone .. '"}}'
  return wrk.format(nil, "/v1/feedback", nil, body)
end

delay = function()
  return pause
end

done = function(summary, latency, requests)
  local failed = summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout
  io.write(string.format(
    '{"requests":%d,"failed":%d,"seconds":%.3f,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, failed, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99), latency.max))
end

-- wrk script: POST /v1/feedback with a new customer and text each time; prints one JSON
-- line of figures at the end (latencies in microseconds).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0

request = function()
  counter = counter + 1
  local phone = string.format("13%09d", (counter * 7919 + math.random(0, 999999)) % 1000000000)
  local body = '{"channel":"web_form","description":"第' .. counter ..
    '条：订单说好三天送达，现在已经第七天了还没有收到货","customer":{"phone":"' .. phone .. '"}}'
  return wrk.format(nil, "/v1/feedback", nil, body)
end

done = function(summary, latency, requests)
  local failed = summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout
  io.write(string.format(
    '{"requests":%d,"failed":%d,"seconds":%.3f,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, failed, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99), latency.max))
end

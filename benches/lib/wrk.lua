-- wrk script for the billguard benchmark: sends the same requests to every
-- target and reports the result as one JSON line on stdout.
--
-- Environment (read once per thread):
--   BENCH_PATH     request path, such as /small or /big
--   BENCH_COOKIES  file with one Cookie header value per line; empty or
--                  unset sends no cookie. With several lines every request
--                  carries the next one (each thread starts at its own
--                  offset), so every request is a different session.
--
-- The requests look like a single-page app's API calls (Accept JSON,
-- X-Requested-With, Fetch Metadata): a proxy that does not know the session
-- answers 401 instead of a redirect, and wrk counts that as an error.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local path = os.getenv("BENCH_PATH") or "/small"
  local file = os.getenv("BENCH_COOKIES") or ""
  local headers = {
    ["Accept"] = "application/json",
    ["X-Requested-With"] = "XMLHttpRequest",
    ["Sec-Fetch-Mode"] = "cors",
    ["Sec-Fetch-Dest"] = "empty",
    ["User-Agent"] = "billguard-bench",
  }
  local cookies = {}
  if file ~= "" then
    for line in io.lines(file) do
      if line ~= "" then table.insert(cookies, line) end
    end
  end
  requests = {}
  if #cookies == 0 then
    requests[1] = wrk.format("GET", path, headers)
  else
    -- Formatted once here, so the per-request work is a table lookup.
    for i, cookie in ipairs(cookies) do
      headers["Cookie"] = cookie
      requests[i] = wrk.format("GET", path, headers)
    end
  end
  -- Spread the threads over the list so they do not send the same session
  -- at the same moment.
  index = (id * math.floor(#requests / 7 + 1)) % #requests
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end

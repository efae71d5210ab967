-- wrk script for bench/storm.py: POSTs a client JWK to the URL's /rec path on a new
-- connection per request (Connection: close, as clevis makes them) and counts statuses.
--
-- With arguments `PATHS_FILE NTHREADS` (storm mode, one connection per thread) each thread
-- sends each of its share of the paths in the file once and stops after the last answer.
-- A path moves on only when its answer came: wrk asks request() again for the same
-- request when a write has to be retried, so advancing there would skip paths.
local threads = {}
local body = os.getenv("STORM_BODY")

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/jwk+json"
wrk.headers["Connection"] = "close"

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  ok = 0
  other = 0
  mine = nil
  if args[1] ~= nil then
    local nthreads = tonumber(args[2])
    mine = {}
    local i = 0
    for line in io.lines(args[1]) do
      if i % nthreads == id then
        table.insert(mine, line)
      end
      i = i + 1
    end
    next_path = 1
  end
end

function request()
  if mine == nil then
    return wrk.format()
  end
  -- Past the end only between the last answer and the stop taking effect: never sent.
  return wrk.format("POST", mine[math.min(next_path, #mine)])
end

function response(status, headers, resp)
  if status == 200 then
    ok = ok + 1
  else
    other = other + 1
  end
  if mine ~= nil then
    next_path = next_path + 1
    if next_path > #mine then
      -- wrk's main thread sleeps out -d whatever its threads do: this line tells
      -- storm.py, which then ends wrk early with SIGINT.
      io.stderr:write("STORM-DONE\n")
      io.stderr:flush()
      wrk.thread:stop()
    end
  end
end

function done(summary, latency, requests)
  local total_ok, total_other = 0, 0
  for _, t in ipairs(threads) do
    total_ok = total_ok + t:get("ok")
    total_other = total_other + t:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    'STORM {"ok":%d,"other":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"timeout":%d,"p50_us":%d,"p99_us":%d}\n',
    total_ok, total_other, summary.duration, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end

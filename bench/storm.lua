-- wrk script for bench/storm.py: POSTs a client JWK to the URL's /rec path on a new
-- connection per request (Connection: close, as clevis makes them) and counts statuses.
--
-- With arguments `PATHS_FILE NTHREADS` (storm mode) each thread sends each of its share of
-- the paths in the file once, over all of its connections, and stops after the last
-- answer. wrk asks request() once per request it sends, so each call takes the next path
-- (except wrk's first call on the first thread, before any connection, which only checks
-- the request's shape: `script_verify_request` in wrk 4.1); once every path is out, a connection still asking gets the device's advertisement
-- (GET, no history row), whose answer is recognised by its JWS payload and not counted. A
-- connection that fails loses its path: wrk counts the error and the thread runs out -d.
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
    issued = 0
    answered = 0
    shape_check_pending = id == 0
    filler = mine[1]:gsub("/rec/[^/]*$", "/adv")
  end
end

function request()
  if mine == nil then
    return wrk.format()
  end
  if shape_check_pending then
    shape_check_pending = false
    return wrk.format("POST", mine[1])
  end
  if issued < #mine then
    issued = issued + 1
    return wrk.format("POST", mine[issued])
  end
  return wrk.format("GET", filler, { ["Connection"] = "close" }, "")
end

function response(status, headers, resp)
  if mine ~= nil and status == 200 and resp:find('"payload"', 1, true) then
    return
  end
  if status == 200 then
    ok = ok + 1
  else
    other = other + 1
  end
  if mine ~= nil then
    answered = answered + 1
    if answered == #mine then
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

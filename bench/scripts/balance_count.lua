-- wrk script for bench/scripts/balance.sh: counts responses per x-worker header, in a table per
-- wrk thread; done() adds the threads' tables up and prints one line:
--   workers <distinct> busiest <count> total <count> share <percent of the busiest>
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  counts = {}
end

function response(status, headers, body)
  local w = headers["x-worker"] or headers["X-Worker"] or "none"
  counts[w] = (counts[w] or 0) + 1
end

function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    if c then
      for w, n in pairs(c) do all[w] = (all[w] or 0) + n end
    end
  end
  local distinct, busiest, total = 0, 0, 0
  for w, n in pairs(all) do
    distinct = distinct + 1
    total = total + n
    if n > busiest then busiest = n end
  end
  local share = 0
  if total > 0 then share = 100 * busiest / total end
  io.write(string.format("workers %d busiest %d total %d share %.1f\n", distinct, busiest, total, share))
end

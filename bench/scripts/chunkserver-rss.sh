#!/usr/bin/env bash
# Chunkserver memory during a 10 GiB transfer, on real processes: one master (R=3), three
# `cairn chunkserver` processes and one `cairn gateway` on loopback, each with its own data
# folder under $DIR. `cairn-bench s3` PUTs then GETs COUNT objects of 1 GiB through the
# gateway while every chunkserver's VmHWM, VmRSS and RssAnon are sampled every 200 ms.
#
#   cargo build --release -p cairn -p cairn-bench --bin cairn --bin cairn-bench
#   bench/scripts/chunkserver-rss.sh            # DIR=/tmp/cairn-rss COUNT=10 by default
#
# Needs 3 x COUNT GiB of free disk in DIR (R=3). Ports 7171-7174 (UDP) and 9300 (TCP).
set -euo pipefail
BIN=${BIN:-target/release}
DIR=${DIR:-/tmp/cairn-rss}
COUNT=${COUNT:-10}
CAIRN=$BIN/cairn
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
rm -rf "$DIR"
mkdir -p "$DIR"/{m,gw,cs1,cs2,cs3}
"$CAIRN" master --id 1 --listen 127.0.0.1:7171 --data "$DIR/m" --replication 3 >"$DIR/m.log" 2>&1 &
pids+=($!)
sleep 3
for i in 1 2 3; do
  "$CAIRN" cluster issue-cert --data "$DIR/m" --name "cs-$i" --san 127.0.0.1 --out "$DIR/cs$i/tls" >/dev/null
done
"$CAIRN" cluster issue-cert --data "$DIR/m" --name gw-1 --out "$DIR/gw/tls" >/dev/null
cs=()
for i in 1 2 3; do
  "$CAIRN" chunkserver --master 127.0.0.1:7171 --listen "127.0.0.1:717$((i + 1))" --data "$DIR/cs$i" >"$DIR/cs$i.log" 2>&1 &
  pids+=($!)
  cs+=($!)
done
sleep 2
CAIRN_ROOT_ACCESS_KEY=RSSBENCHKEY000000001 CAIRN_ROOT_SECRET_KEY=rssbenchsecret \
  "$CAIRN" gateway --master 127.0.0.1:7171 --listen 127.0.0.1:9300 --data "$DIR/gw" >"$DIR/gw.log" 2>&1 &
pids+=($!)
sleep 4
(
  while true; do
    for p in "${cs[@]}"; do
      echo "$p $(grep -E '^(VmHWM|VmRSS|RssAnon)' "/proc/$p/status" | awk '{print $2}' | tr '\n' ' ')"
    done
    sleep 0.2
  done
) >"$DIR/rss.txt" &
sampler=$!
"$BIN/cairn-bench" s3 --endpoint http://127.0.0.1:9300 --access-key RSSBENCHKEY000000001 \
  --secret-key rssbenchsecret --large-size 1GiB --large-count "$COUNT" --large-concurrency 1 \
  --seconds 1 2>"$DIR/bench.err" | grep -E '^(large|workload)'
kill "$sampler"
echo "chunkserver pid | peak VmHWM | peak VmRSS | peak RssAnon (MiB)"
awk '{ if ($2 > h[$1]) h[$1] = $2; if ($3 > r[$1]) r[$1] = $3; if ($4 > a[$1]) a[$1] = $4 }
     END { for (p in h) printf "%s | %d | %d | %d\n", p, h[p] / 1024, r[p] / 1024, a[p] / 1024 }' "$DIR/rss.txt"

#!/bin/bash
# A/B: edge --delta auto vs off, hits (ttl 3600) and upstream requests (ttl 0), 1 KB objects, wrk -c64.
T=${T:-target/release}
$T/tern-lab origin --listen 127.0.0.1:19100 --ttl 3600 >/dev/null 2>&1 & O1=$!
$T/tern-lab origin --listen 127.0.0.1:19101 --ttl 0 >/dev/null 2>&1 & O2=$!
sleep 0.5
for round in 1 2 3; do
for mode in off auto; do
 for origin in 19100 19101; do
  TERN_LOG=error taskset -c 0 $T/tern edge --listen 127.0.0.1:19200 --origin http://127.0.0.1:$origin --delta $mode >/dev/null 2>&1 & E=$!
  sleep 0.7
  curl -s -o /dev/null http://127.0.0.1:19200/obj/1024/1
  r=$(taskset -c 1 wrk -t1 -c64 -d5s http://127.0.0.1:19200/obj/1024/1 | awk '/Requests\/sec/{print $2}')
  echo "round $round mode $mode ttl $([ $origin = 19100 ] && echo 3600 || echo 0) req/s $r"
  kill $E; wait $E 2>/dev/null
 done
done
done
kill $O1 $O2

#!/bin/bash
# usage: run.sh EDGE_PORT PATH  -> leader then follower 300 ms later; prints follower TTFB and total
port=$1; path=$2
curl -s -o /dev/null -w "leader   ttfb=%{time_starttransfer}s total=%{time_total}s\n" http://127.0.0.1:$port$path &
sleep 0.3
curl -s -o /dev/null -w "follower ttfb=%{time_starttransfer}s total=%{time_total}s size=%{size_download}\n" http://127.0.0.1:$port$path
wait

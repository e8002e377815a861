#!/bin/bash
# usage: run-late.sh EDGE_PORT PATH DELAY -> leader, then a joiner DELAY seconds later
port=$1; path=$2; delay=$3
curl -s -o /dev/null -w "leader   ttfb=%{time_starttransfer}s total=%{time_total}s\n" http://127.0.0.1:$port$path &
sleep $delay
curl -s -o /tmp/rww/joined.out -w "joiner   ttfb=%{time_starttransfer}s total=%{time_total}s size=%{size_download}\n" http://127.0.0.1:$port$path
wait

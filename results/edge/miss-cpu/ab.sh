#!/bin/bash
# usage: ab2.sh ROUNDS BIN... — per binary: user and system CPU µs per miss of the edge (miss-cpu load)
R=$1; shift
taskset -c 1 /tmp/tern-lab-bin origin --listen 127.0.0.1:39201 >/dev/null 2>&1 &
OPID=$!
sleep 0.5
TCK=$(getconf CLK_TCK)
for i in $(seq 1 $R); do
  for b in "$@"; do
    taskset -c 0 $b edge --listen 127.0.0.1:39202 --origin http://127.0.0.1:39201 --cache-size 3G --log warn 2>/dev/null &
    EPID=$!
    sleep 0.7
    cat > /tmp/ab2.lua <<LUA
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/obj/1024/ab-$i-$(basename $b)-$RANDOM-" .. counter)
end
LUA
    taskset -c 1 wrk -t1 -c64 -d2s -s /tmp/ab2.lua http://127.0.0.1:39202 >/dev/null
    read -r u0 s0 < <(awk '{print $14, $15}' /proc/$EPID/stat)
    st0=$(awk '/^cpu /{print $9}' /proc/stat)
    out=$(taskset -c 1 wrk -t1 -c64 -d8s -s /tmp/ab2.lua http://127.0.0.1:39202)
    read -r u1 s1 < <(awk '{print $14, $15}' /proc/$EPID/stat)
    st1=$(awk '/^cpu /{print $9}' /proc/stat)
    n=$(echo "$out" | awk '/requests in/{print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    kill $EPID; wait $EPID 2>/dev/null
    awk -v b=$(basename $b) -v n=$n -v u=$((u1-u0)) -v s=$((s1-s0)) -v t=$TCK -v rps=$rps -v st=$((st1-st0)) 'BEGIN{printf "%-12s %8.0f req/s  user %5.1f us  sys %5.1f us  total %5.1f us/miss  steal %d\n", b, rps, u/t*1e6/n, s/t*1e6/n, (u+s)/t*1e6/n, st}'
  done
done
kill $OPID

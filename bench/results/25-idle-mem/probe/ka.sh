#!/bin/bash
# server CPU per kept-alive request (fixed-reply app, our TLS+HTTP layer only), alternated
cd /tmp/idlemem/nc
for i in 1 2 3; do for v in A C B; do
  case $v in A) src=/work/wt-idle-mem-base/src;; B) src=/work/wt-idle-mem/src;; C) src=/work/wt-idle-mem-c/src;; esac
  flock /tmp/iotgate-bench.lock bash -c "
  PYTHONPATH=$src /work/main/.venv/bin/python server.py /tmp/idlemem/nc/certs > port-$v.txt 2>/dev/null &
  spid=\$!; sleep 2; port=\$(head -1 port-$v.txt)
  wrk -t1 -c64 -d2s -s post.lua https://127.0.0.1:\$port/topic/x > /dev/null
  t0=\$(awk '{print \$14+\$15}' /proc/\$spid/stat)
  n=\$(wrk -t1 -c64 -d6s -s post.lua https://127.0.0.1:\$port/topic/x | awk '/requests in/ {print \$1}')
  t1=\$(awk '{print \$14+\$15}' /proc/\$spid/stat)
  echo $v$i \$n req, \$(( (t1 - t0) * 10000000 / n )) ns/req
  kill \$spid"
done; done

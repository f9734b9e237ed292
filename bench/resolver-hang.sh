#!/usr/bin/env bash
# Usage: bench/resolver-hang.sh PATH/TO/statsrelay   (root; unshare -mn, a DNS server on 127.0.0.1:53 that reads and never answers)
# Measures: SIGTERM while 9 backend names stop resolving mid-run, SIGTERM during start-up lookups, a start-up left to the resolver.
# A resolver that never answers (DNS to 127.0.0.1:53 dropped), in private net+mount namespaces.
set -euo pipefail
R=$1
exec unshare -mn bash -euo pipefail -c '
R='"$R"'
T=$(mktemp -d); trap "rm -rf $T" EXIT
ip link set lo up
echo "nameserver 127.0.0.1" > $T/resolv; mount --bind $T/resolv /etc/resolv.conf
printf "127.0.0.1 localhost\n" > $T/hosts
for i in 1 2 3 4 5 6 7 8 9; do echo "127.0.0.1 be$i.test" >> $T/hosts; done
mount --bind $T/hosts /etc/hosts
python3 -c "
import socket,time
u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind((\"127.0.0.1\",53))
t=socket.socket(); t.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); t.bind((\"127.0.0.1\",53)); t.listen(64)
time.sleep(300)" & DNS=$!
sleep 0.3
getent_s=$(date +%s.%N); timeout 30 getent hosts nowhere.test || true; echo "control: getent of an unknown name took $(echo "$(date +%s.%N) - $getent_s" | bc) s"
BE="be1.test:9001 be2.test:9002 be3.test:9003 be4.test:9004 be5.test:9005 be6.test:9006 be7.test:9007 be8.test:9008 be9.test:9009"
# 1. Names resolve at start (hosts), then stop resolving (the resolver hangs) while it runs.
$R run --io-backend uring --bind 127.0.0.1 --port 8125 --threads 1 --admin none --dns-refresh 1s --shutdown-timeout 900ms $BE 2>$T/log1 & P=$!
sleep 1.5; printf "127.0.0.1 localhost\n" > $T/hosts; sleep 3; pkill -0 -f "dns-refresh 1s" && echo "relay still running after its names stopped resolving"; grep -c "" $T/log1 | sed "s/^/log lines: /"
s=$(date +%s.%N); kill -TERM $P; set +e; wait $P; rc=$?; set -e; e=$(date +%s.%N)
echo "running, 9 names whose lookups hang: SIGTERM to exit $(echo "$e - $s" | bc) s, exit $rc (--shutdown-timeout 900ms)"
# 2. Names that do not resolve at start: SIGTERM during the start-up lookups.
$R run --io-backend uring --bind 127.0.0.1 --port 8125 --threads 1 --admin none $BE 2>$T/log2 & P=$!
sleep 1; s=$(date +%s.%N); kill -TERM $P; set +e; wait $P; rc=$?; set -e; e=$(date +%s.%N)
echo "start-up lookups hanging: SIGTERM to exit $(echo "$e - $s" | bc) s, exit $rc"; tail -c 400 $T/log2
# 3. Left alone: the start-up gives up with a resolver error.
s=$(date +%s.%N); set +e; timeout 60 $R run --io-backend uring --bind 127.0.0.1 --port 8125 --threads 1 --admin none be1.test:9001 2>$T/log3; rc=$?; set -e; e=$(date +%s.%N)
echo "start-up, resolver never answers: exit $rc after $(echo "$e - $s" | bc) s"; tail -c 400 $T/log3
kill $DNS
'

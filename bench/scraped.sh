#!/usr/bin/env bash
# bench/scraped.sh HOST:PORT CMD...: run CMD (a consumer serving --metrics on
# HOST:PORT) while /metrics is scraped every 100 ms over one kept-alive
# connection, as a Prometheus pressed hard would. The scraper runs on the
# consumer's CPU (it inherits run.sh's taskset), starts before the consumer
# (Python's start-up stays out of the measured windows), ends with it, and
# says how many scrapes were answered. Used by run.sh's accept-scraped line.
set -u
addr=$1
shift
# $$ stays this script's pid, which the consumer takes over with exec.
coproc SCRAPER { python3 -u - "$addr" $$ <<'PY'
import http.client, os, sys, time
host, port = sys.argv[1].rsplit(":", 1)
consumer = int(sys.argv[2])
def alive():
    try:
        os.kill(consumer, 0)
        return True
    except OSError:
        return False
print("ready")
conn, answered, due = None, 0, time.monotonic()
while alive():
    try:
        conn = conn or http.client.HTTPConnection(host, int(port), timeout=1)
        conn.request("GET", "/metrics")
        if conn.getresponse().read():
            answered += 1
    except (OSError, http.client.HTTPException):
        conn = None
    due += 0.1
    time.sleep(max(0.0, due - time.monotonic()))
print("scraped.sh: %d scrapes answered" % answered, file=sys.stderr)
PY
}
read -r _ <&"${SCRAPER[0]}"
exec "$@"

#!/usr/bin/env bash
# WebSocket conformance: the Autobahn|Testsuite fuzzing client against genro-asgi serving the
# echo route of tests/apps/ws.py. Counts the verdicts; exits 1 if any case is not OK,
# NON-STRICT or INFORMATIONAL.
#
#   scripts/autobahn.sh [full|quick]
#     full  (default) sections 1-7, 9, 10, 12, 13: 517 cases, about 25 minutes with a
#           release build (most of it the suite's own Python 2 client compressing 12/13).
#     quick sections 1-7, 9, 10 and the two first cases of every 12/13 group (CI: about a
#           minute).
#   GENRO_ASGI_BIN  the binary (default target/debug/genro-asgi)
#   AUTOBAHN_DIR    where the suite is installed (default target/autobahn/venv)
#   AUTOBAHN_REPORT where the report goes (default target/autobahn/report)
#
# The suite runs on Python 2.7 (pyenv's, or PY2=/path/to/python2.7); its pinned
# dependencies are installed into a virtualenv on first use (about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-full}
bin=${GENRO_ASGI_BIN:-$PWD/target/debug/genro-asgi}
venv=${AUTOBAHN_DIR:-$PWD/target/autobahn/venv}
report=${AUTOBAHN_REPORT:-$PWD/target/autobahn/report}
# The server reads GENRO_ASGI_<SECTION>_<KEY> and refuses unknown ones.
unset GENRO_ASGI_BIN

case $mode in
  full) cases='"1.*","2.*","3.*","4.*","5.*","6.*","7.*","9.*","10.*","12.*","13.*"' ;;
  quick)
    cases='"1.*","2.*","3.*","4.*","5.*","6.*","7.*","9.*","10.*"'
    # The two smallest-message cases of every permessage-deflate group (12.1-12.5: the
    # client's offers; 13.1-13.7: window bits and context takeover parameters).
    for g in 1 2 3 4 5; do cases+=",\"12.$g.1\",\"12.$g.2\""; done
    for g in 1 2 3 4 5 6 7; do cases+=",\"13.$g.1\",\"13.$g.2\""; done
    ;;
  *) echo "usage: $0 [full|quick]" >&2; exit 2 ;;
esac

if [ ! -x "$venv/bin/wstest" ]; then
  py2=${PY2:-$(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/2.7*/bin/python 2>/dev/null | head -1)}
  [ -x "$py2" ] || { echo "autobahn: needs Python 2.7 (pyenv install 2.7.18, or PY2=/path/to/python2.7)" >&2; exit 1; }
  boot=$(mktemp -d)
  "$py2" -m pip install -q --disable-pip-version-check --target "$boot" "virtualenv<20.22"
  PYTHONPATH="$boot" "$py2" -m virtualenv -q "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check txaio==2.1.0 incremental==16.10.1 pyOpenSSL==19.1.0 \
    cryptography==3.3.2 Twisted==19.10.0 zope.interface==4.6.0 jinja2==2.11.3 markupsafe==1.1.1 \
    Werkzeug==1.0.1 klein==17.10.0 service_identity==18.1.0 unittest2==1.1.0 six==1.16.0 \
    "autobahn[twisted,accelerate]==0.10.9" autobahntestsuite==25.10.1
  rm -rf "$boot"
fi

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/server.ini" <<INI
[server]
port = $port
run_dir = $work/run
[logging]
level = WARNING
[application]
app = ws:app
app_dir = $PWD/tests/apps
INI
"$bin" serve --config "$work/server.ini" > "$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.2
done

rm -rf "$report"
mkdir -p "$report"
cat > "$work/spec.json" <<JSON
{"outdir": "$report", "servers": [{"agent": "genro-asgi", "url": "ws://127.0.0.1:$port/"}],
 "cases": [$cases], "exclude-cases": [], "exclude-agent-cases": {}}
JSON
started=$(date +%s)
(cd "$work" && "$venv/bin/wstest" -m fuzzingclient -s spec.json > wstest.log 2>&1) || {
  tail -20 "$work/wstest.log" >&2; exit 1; }
echo "autobahn ($mode): $(( $(date +%s) - started ))s; report in $report/index.html"
kill -0 $server 2>/dev/null || { echo "the server died during the run:" >&2; cat "$work/server.log" >&2; exit 1; }
python3 scripts/autobahn_count.py "$report/index.json"

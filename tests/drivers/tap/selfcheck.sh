#!/bin/sh
# Checks the receive tap end to end, without Tollgate: the Snowflake stand-in and the unmodified
# Python and Node agents run with the tap on, then `tap_scan` must find known seeded values (an
# inline result, chunked results, a VARIANT column) in what each driver received.
#
#   tests/drivers/tap/selfcheck.sh [WORKDIR]        (root; needs `cargo xtask setup`'s venv and
#                                                   node_modules, and openssl)
#
# Everything runs in a private network namespace (only its own loopback) and a private mount
# namespace (its own /etc/hosts), so the stand-in can listen on 127.0.0.1:443 (the drivers have
# no port override) without touching the host's network or anyone else's tests. TLS material
# comes from openssl. WORKDIR (default: a fresh /tmp directory) keeps the PKI, the stand-in's log
# and request log, the agents' output and the tap directories (tap-python/, tap-node/).
# Environment: TOLLGATE_TEST_VENV, TOLLGATE_TEST_NODE (as for the e2e suites), CARGO_TARGET_DIR.
set -eu

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
VENV=${TOLLGATE_TEST_VENV:-/opt/tollgate-test/venv}
NODE=${TOLLGATE_TEST_NODE:-$(command -v node)}
ACCOUNT=demo-acct
STORAGE=sfc-results.s3.us-west-2.amazonaws.com

if [ -z "${TAPCHECK_INNER:-}" ]; then
    WORK=${1:-$(mktemp -d /tmp/tollgate-tapcheck-XXXXXX)}
    mkdir -p "$WORK"
    WORK=$(cd "$WORK" && pwd)
    TAPCHECK_INNER=1 unshare --net --mount --propagation private -- "$0" "$WORK"
    cd "$ROOT"
    status=0
    for kind in python node; do
        echo "== $kind: $(grep -c '"ok": *true' "$WORK/$kind.out") of 4 statements ok" \
            "(chunked: $(grep -o '"chunks": [0-9]*' "$WORK/requests.jsonl" | sort | uniq -c | tr '\n' ' '))"
        cargo run -q -p tollgate-e2e --example tap_scan -- "$WORK/tap-$kind" --require-all \
            --needle 900-00-0001 --needle 'Alice Synthetic' --needle event-99999 \
            --needle 'Bulk Person 119999' --needle 700-23-3999 --needle MRN-0119999 \
            --needle alice.synthetic@example.org --needle '(415) 555-0101' \
            --regex '\b7[0-9]{2}-[0-9]{2}-[0-9]{4}\b' || status=1
    done
    echo "workdir: $WORK"
    exit $status
fi

WORK=$1
cd "$WORK"
ip link set lo up

# PKI: a CA and a server certificate for the account and storage hosts.
mkdir -p pki home
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=tapcheck CA" \
    -keyout pki/ca.key -out pki/ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$ACCOUNT.snowflakecomputing.com" \
    -keyout pki/server.key -out pki/server.csr 2>/dev/null
printf 'subjectAltName=DNS:%s,DNS:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    "$ACCOUNT.snowflakecomputing.com" "$STORAGE" >pki/ext.cnf
openssl x509 -req -in pki/server.csr -CA pki/ca.pem -CAkey pki/ca.key -CAcreateserial -days 2 \
    -extfile pki/ext.cnf -out pki/server.pem 2>/dev/null

printf '127.0.0.1 localhost\n127.0.0.1 %s %s\n' "$ACCOUNT.snowflakecomputing.com" "$STORAGE" >hosts
mount --bind "$WORK/hosts" /etc/hosts

start=$(date +%s.%N)
"$VENV/bin/python" "$ROOT/tests/standin/standin.py" --host 127.0.0.1 --port 443 \
    --cert pki/server.pem --key pki/server.key --request-log requests.jsonl \
    --seed-sql "$ROOT/tests/standin/seed.sql" --storage-host "$STORAGE" \
    >standin.out 2>standin.log &
standin=$!
trap 'kill $standin 2>/dev/null || true' EXIT
i=0
until grep -q '^standin ready$' standin.out; do
    i=$((i + 1))
    if [ $i -gt 600 ] || ! kill -0 $standin 2>/dev/null; then
        echo "stand-in did not start:" >&2
        cat standin.log >&2
        exit 1
    fi
    sleep 0.1
done
echo "stand-in ready after $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $start}")s; $(grep seeded standin.log)"

cat >statements.json <<'EOF'
[{"sql": "SELECT * FROM CLINICAL.EHR.PATIENTS ORDER BY ID"},
 {"sql": "SELECT * FROM BULK.PUBLIC.EVENTS", "digest": true},
 {"sql": "SELECT * FROM CLINICAL.EHR.PATIENTS_BULK ORDER BY ID", "digest": true},
 {"sql": "SELECT * FROM CLINICAL.EHR.PATIENT_CONTACTS ORDER BY PATIENT_ID"}]
EOF

agent_args="--account $ACCOUNT --user agent1 --password synthetic-password --database CLINICAL
    --schema EHR --warehouse WH --role ANALYST --statements $WORK/statements.json"
clean_env="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=$WORK/home
    LANG=C.UTF-8 SNOWFLAKE_DISABLE_PLATFORM_DETECTION=true AWS_EC2_METADATA_DISABLED=true"

# shellcheck disable=SC2086 # word splitting of the argument lists is intended
env -i $clean_env REQUESTS_CA_BUNDLE="$WORK/pki/ca.pem" TOLLGATE_TAP_DIR="$WORK/tap-python" \
    PYTHONPATH="$ROOT/tests/drivers/tap" PYTHONDONTWRITEBYTECODE=1 \
    "$VENV/bin/python" "$ROOT/tests/drivers/python/agent.py" $agent_args \
    >python.out 2>python.err || true
# shellcheck disable=SC2086
env -i $clean_env NODE_EXTRA_CA_CERTS="$WORK/pki/ca.pem" TOLLGATE_TAP_DIR="$WORK/tap-node" \
    NODE_OPTIONS="--require \"$ROOT/tests/drivers/tap/tap.js\"" \
    "$NODE" "$ROOT/tests/drivers/node/agent.js" $agent_args \
    >node.out 2>node.err || true

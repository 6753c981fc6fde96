#!/usr/bin/env bash
# Measure peer PostgreSQL job queues on one workload: enqueue JOBS no-op jobs, drain them with one worker process.
# Prints one JSON line per measurement on stdout; progress goes to stderr.
#
#   bench/peers/run.sh                         # every peer, every configuration, once
#   PEERS="pgqueuer" REPEAT=3 bench/peers/run.sh
#
# Environment:
#   PEER_DSN      server DSN with rights to create databases (default postgresql://root@127.0.0.1:5432/postgres)
#   PEERS_DIR     cache for the peer venvs and node_modules (default /tmp/sched-peers)
#   PEERS         which peers to run, space separated (default "pgqueuer graphile procrastinate")
#   JOBS          jobs per measurement (default 20500)
#   REPEAT        runs per configuration (default 1)
#   PGQUEUER_BATCHES      batch sizes for PgQueuer (default "10 50")
#   PGQUEUER_SPEC         pip requirements for PgQueuer (default "pgqueuer[asyncpg]>=1,<2")
#   GRAPHILE_SPEC         npm spec for Graphile Worker (default "graphile-worker@^0.17", the newest line for Node 20)
#   GRAPHILE_CONCURRENCY  concurrent jobs in the one worker (default 24)
#   GRAPHILE_LOCAL_QUEUE  jobs fetched per query (localQueue.size, default 500)
#   GRAPHILE_BATCH_DELAY  completeJobBatchDelay / failJobBatchDelay in ms (default 0)
#   PROCRASTINATE_SPEC    pip requirements for Procrastinate (default "procrastinate>=3,<4 psycopg[binary]")
#   PROCRASTINATE_CONCURRENCY  worker concurrency (default 10)
#   PYTHON        interpreter used to create the venvs (default python3)
#
# Every measurement gets a freshly created database that is dropped afterwards.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEER_DSN="${PEER_DSN:-postgresql://root@127.0.0.1:5432/postgres}"
PEERS_DIR="${PEERS_DIR:-/tmp/sched-peers}"
PEERS="${PEERS:-pgqueuer graphile procrastinate}"
JOBS="${JOBS:-20500}"
REPEAT="${REPEAT:-1}"
PGQUEUER_BATCHES="${PGQUEUER_BATCHES:-10 50}"
PGQUEUER_SPEC="${PGQUEUER_SPEC:-pgqueuer[asyncpg]>=1,<2}"
GRAPHILE_SPEC="${GRAPHILE_SPEC:-graphile-worker@^0.17}"
GRAPHILE_CONCURRENCY="${GRAPHILE_CONCURRENCY:-24}"
GRAPHILE_LOCAL_QUEUE="${GRAPHILE_LOCAL_QUEUE:-500}"
GRAPHILE_BATCH_DELAY="${GRAPHILE_BATCH_DELAY:-0}"
PROCRASTINATE_SPEC="${PROCRASTINATE_SPEC:-procrastinate>=3,<4 psycopg[binary]}"
PROCRASTINATE_CONCURRENCY="${PROCRASTINATE_CONCURRENCY:-10}"
PYTHON="${PYTHON:-python3}"

log() { echo "[peers] $*" >&2; }

# DSN of database $1 on the same server as PEER_DSN (the path is replaced, the query string kept).
db_dsn() {
    "$PYTHON" -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' \
        "$PEER_DSN" "$1"
}

CURRENT_DB=""
psql_admin() { PGOPTIONS="-c client_min_messages=warning" psql "$PEER_DSN" -qX -v ON_ERROR_STOP=1 "$@" >/dev/null; }
drop_db() {
    if [[ -n "$CURRENT_DB" ]]; then
        psql_admin -c "DROP DATABASE IF EXISTS $CURRENT_DB WITH (FORCE)"
        CURRENT_DB=""
    fi
}
fresh_db() {
    CURRENT_DB="$1"
    psql_admin -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"
}
trap drop_db EXIT

# A venv per Python peer, rebuilt only when the requirement changes.
python_venv() {
    local name="$1" spec="$2" venv="$PEERS_DIR/$1-venv"
    if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.spec" 2>/dev/null)" != "$spec" ]]; then
        log "installing $spec into $venv"
        rm -rf "$venv"
        "$PYTHON" -m venv "$venv"
        local reqs
        read -r -a reqs <<<"$spec" # a spec may hold several requirements
        "$venv/bin/pip" install --quiet --disable-pip-version-check "${reqs[@]}" >&2
        echo "$spec" >"$venv/.spec"
    fi
    log "$name $("$venv/bin/pip" show "$name" 2>/dev/null | sed -n 's/^Version: //p')"
}

node_modules() {
    local dir="$PEERS_DIR/graphile"
    if [[ ! -d "$dir/node_modules/graphile-worker" || "$(cat "$dir/.spec" 2>/dev/null)" != "$GRAPHILE_SPEC" ]]; then
        log "installing $GRAPHILE_SPEC into $dir"
        rm -rf "$dir"
        mkdir -p "$dir"
        echo '{"private": true}' >"$dir/package.json"
        (cd "$dir" && npm install --no-audit --no-fund --loglevel=error "$GRAPHILE_SPEC" >&2)
        echo "$GRAPHILE_SPEC" >"$dir/.spec"
    fi
    log "graphile-worker $(node -p "require('$dir/node_modules/graphile-worker/package.json').version"), node $(node --version)"
}

mkdir -p "$PEERS_DIR"

for peer in $PEERS; do
    case "$peer" in
    pgqueuer)
        python_venv pgqueuer "$PGQUEUER_SPEC"
        for batch in $PGQUEUER_BATCHES; do
            for _ in $(seq "$REPEAT"); do
                fresh_db peer_pgqueuer
                "$PEERS_DIR/pgqueuer-venv/bin/python" "$HERE/pgqueuer_drain.py" \
                    --dsn "$(db_dsn peer_pgqueuer)" --jobs "$JOBS" --batch "$batch"
                drop_db
            done
        done
        ;;
    graphile)
        node_modules
        for _ in $(seq "$REPEAT"); do
            fresh_db peer_graphile
            NODE_PATH="$PEERS_DIR/graphile/node_modules" node "$HERE/graphile_drain.js" \
                --dsn "$(db_dsn peer_graphile)" --jobs "$JOBS" --concurrency "$GRAPHILE_CONCURRENCY" \
                --local-queue "$GRAPHILE_LOCAL_QUEUE" --batch-delay "$GRAPHILE_BATCH_DELAY"
            drop_db
        done
        ;;
    procrastinate)
        python_venv procrastinate "$PROCRASTINATE_SPEC"
        for _ in $(seq "$REPEAT"); do
            fresh_db peer_procrastinate
            "$PEERS_DIR/procrastinate-venv/bin/python" "$HERE/procrastinate_drain.py" \
                --dsn "$(db_dsn peer_procrastinate)" --jobs "$JOBS" --concurrency "$PROCRASTINATE_CONCURRENCY"
            drop_db
        done
        ;;
    *)
        log "unknown peer: $peer"
        exit 2
        ;;
    esac
done

#!/usr/bin/env bash
# Ingest on PostgreSQL against SQLite, alternated: SQLite, PostgreSQL (a fresh database each run), repeated.
# usage: bench/pg_vs_sqlite.sh OUTDIR [PAIRS] [SCENARIOS] [extra `iotgate bench` args...]
#   e.g. bench/pg_vs_sqlite.sh bench/results/25-pg 3 alink-post,iotda-gateway
# Needs PostgreSQL on 127.0.0.1:5432 with trust auth for user postgres (as on the CI machine).
set -euo pipefail
out=${1:?output directory}; pairs=${2:-3}; scenarios=${3:-alink-post,iotda-gateway}; shift $(( $# < 3 ? $# : 3 ))
python=${PYTHON:-python}
pg_admin="postgresql://postgres@127.0.0.1:5432/postgres"
mkdir -p "$out"
for scenario in ${scenarios//,/ }; do
  for i in $(seq 1 "$pairs"); do
    flock /tmp/iotgate-bench.lock "$python" -m iotgate bench -s "$scenario" --rounds 1 --duration 10 --no-nginx \
      --json "$out/$scenario-sqlite-$i.json" "$@" | tee "$out/$scenario-sqlite-$i.txt"
    db="iotgate_bench_$(date +%s)_$i"
    psql -q "$pg_admin" -c "CREATE DATABASE $db"
    flock /tmp/iotgate-bench.lock "$python" -m iotgate bench -s "$scenario" --rounds 1 --duration 10 --no-nginx \
      --server-arg="--database=postgresql://postgres@127.0.0.1:5432/$db" \
      --json "$out/$scenario-pg-$i.json" "$@" | tee "$out/$scenario-pg-$i.txt"
    psql -q "$pg_admin" -c "DROP DATABASE $db WITH (FORCE)"
  done
done

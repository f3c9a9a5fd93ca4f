# Starts the services the tests need, on free ports in a temporary folder,
# and stops them when the calling script exits. Sourced by scripts/test.sh
# (or by hand: `source scripts/services.sh; start_services`).
#
# Exports, for the tests:
#   MESH_TEST_POSTGRES  postgres://mesh@127.0.0.1:PORT/mesh (trust auth, a
#                       throwaway cluster owned by the `postgres` user)
#   MESH_TEST_NATS      nats://127.0.0.1:PORT (JetStream on, store in the
#                       temporary folder)
#   MESH_TEST_NATS_BIN  the nats-server binary (tests restart NATS)
# Tests that need one of these fail under CI=true when it is missing.

services_dir=""
services_pids=""

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

stop_services() {
  if [ -n "$services_dir" ] && [ -d "$services_dir/pg" ]; then
    su postgres -s /bin/sh -c "pg_ctl -D '$services_dir/pg' -m immediate stop" >/dev/null 2>&1 || true
  fi
  for pid in $services_pids; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$services_dir" ]; then rm -rf "$services_dir"; fi
}

start_services() {
  # PostgreSQL refuses to run as root: its cluster belongs to `postgres`,
  # in a folder that user can enter (mktemp -d makes one only root can).
  services_dir=$(mktemp -d)
  chmod 755 "$services_dir"
  local pgbin
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$pgbin" ]; then
    echo "PostgreSQL is not installed (Debian package postgresql)" >&2
    return 1
  fi
  local pg_port nats_port
  pg_port=$(free_port)
  mkdir "$services_dir/pg" "$services_dir/pg-run"
  chown postgres "$services_dir/pg" "$services_dir/pg-run"
  su postgres -s /bin/sh -c "PATH='$pgbin':\$PATH initdb --no-sync -A trust -U postgres -D '$services_dir/pg'" >/dev/null || return 1
  # fsync stays on: the tests kill nodes and rely on acknowledged commits.
  su postgres -s /bin/sh -c "PATH='$pgbin':\$PATH pg_ctl -D '$services_dir/pg' -w -s -l '$services_dir/pg-run/pg.log' \
    -o \"-p $pg_port -k '$services_dir/pg-run' -c listen_addresses=127.0.0.1 -c max_connections=300\" start" || return 1
  "$pgbin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -c "CREATE ROLE mesh LOGIN SUPERUSER" \
    -c "CREATE DATABASE mesh OWNER mesh" >/dev/null || return 1
  export MESH_TEST_POSTGRES="postgres://mesh@127.0.0.1:$pg_port/mesh"
  echo "PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') on port $pg_port"

  if command -v nats-server >/dev/null 2>&1; then
    nats_port=$(free_port)
    mkdir "$services_dir/nats"
    # Debian's nats-server is 2.9: JetStream needs -js and a store folder.
    nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$services_dir/nats" >"$services_dir/nats.log" 2>&1 &
    services_pids="$services_pids $!"
    export MESH_TEST_NATS="nats://127.0.0.1:$nats_port"
    MESH_TEST_NATS_BIN=$(command -v nats-server)
    export MESH_TEST_NATS_BIN
    for _ in $(seq 1 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null; then break; fi
      sleep 0.05
    done
    echo "nats-server $(nats-server --version | awk '{print $2}') on port $nats_port"
  fi
}

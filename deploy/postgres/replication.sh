#!/bin/sh
# Run once, when the db service's volume is first made (docker-entrypoint-initdb.d): lets
# streaming replicas (the compose file's `replica`) connect for replication, with a password.
# PostgreSQL's defaults already stream: wal_level=replica, max_wal_senders=10.
set -e
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"

# Test-only stand-in for the official postgres image (no container registry is reachable in CI here): Debian's
# PostgreSQL 15 from the debootstrap base, with an entrypoint honouring POSTGRES_USER / POSTGRES_PASSWORD /
# POSTGRES_DB / PGPORT and /docker-entrypoint-initdb.d/*.sql like the official one.
ARG BASE_IMAGE=autotune-base:bookworm
FROM ${BASE_IMAGE}
COPY tests/docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
RUN mkdir -p /var/lib/postgresql/data /docker-entrypoint-initdb.d /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
 && chmod 0755 /usr/local/bin/postgres-entrypoint.sh
USER postgres
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data/pgdata
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]

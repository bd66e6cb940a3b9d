# The proxy in front of the API (docker-compose.yml's `proxy` service): Debian's
# nginx, the package the tests run (tests/api/test_hostile_clients.py). Its config is
# deploy/nginx.conf, mounted read-only; every path it writes is under the prefix.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx-light \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/nginx/tussis
EXPOSE 8080
CMD ["nginx", "-p", "/var/lib/nginx/tussis/", "-c", "/etc/nginx/tussis.conf", "-e", "stderr", "-g", "daemon off;"]

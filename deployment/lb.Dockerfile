# The `lb` service: HAProxy in front of the ranker's replicas, with haproxy.cfg.
# On python:3.11-slim, the base the MLflow server's image and the ranker's Bento already use (no other
# image to fetch and trust), with Debian bookworm's haproxy package (the 2.6 LTS branch); its python
# answers compose's health check. The Debian revision is not pinned: the security archive replaces
# 2.6.12-1+deb12uN with the next revision, and an exact pin would stop building when it does.
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*
COPY haproxy.cfg /etc/haproxy/haproxy.cfg
# The package's own unprivileged user: the config binds ports above 1024 and needs nothing else.
USER haproxy
EXPOSE 3000
# `docker stop` sends SIGUSR1, HAProxy's soft stop: it stops listening and finishes the requests in
# flight (SIGTERM would cut them).
STOPSIGNAL SIGUSR1
# -db: in the foreground, logging to stdout (`docker compose logs lb`).
CMD ["/usr/sbin/haproxy", "-db", "-f", "/etc/haproxy/haproxy.cfg"]

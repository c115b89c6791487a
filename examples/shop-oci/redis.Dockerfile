# Redis, in memory only (no RDB/AOF). The base image has redis-server (scripts/oci-base).
FROM localhost/debian:12
CMD ["redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no", \
     "--save", "", "--appendonly", "no", "--dir", "/tmp", "--daemonize", "no"]

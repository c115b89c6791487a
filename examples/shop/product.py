"""product: the catalogue service of the shop stack (runs as 3 replicas).

Serves products stored in Redis and counts how often each one is viewed.
Every answer says which replica produced it ("served_by"), so the gateway's
round-robin can be seen from outside.

Environment (set by plumb):
  PLUMB_SERVICE, PLUMB_REPLICA  -> served_by = "<service>-<replica>"
  PLUMB_ADDRS_REDIS             -> Redis address (first entry); else the
                                   hostname "redis" (the stack's DNS)
Overrides for running outside plumb: HOST (listen address, default 0.0.0.0),
PORT (default 5001), REDIS_PORT (default 6379).
"""
import json
import os
import socket
import sys
import time

import redis
from flask import Flask, jsonify

# Seeded into Redis at start-up; Redis, not this list, is the source of truth.
CATALOGUE = [
    {"id": 1, "name": "Espresso cup", "price": 6.50},
    {"id": 2, "name": "French press", "price": 24.00},
    {"id": 3, "name": "Burr grinder", "price": 89.90},
    {"id": 4, "name": "Coffee beans, 1 kg", "price": 19.00},
    {"id": 5, "name": "Milk jug", "price": 12.00},
]

replica = os.environ.get("PLUMB_REPLICA")
SERVED_BY = (f"{os.environ.get('PLUMB_SERVICE', 'product')}-{replica}"
             if replica else socket.gethostname())

redis_addrs = os.environ.get("PLUMB_ADDRS_REDIS", "")
REDIS_HOST = redis_addrs.split(",")[0].strip() or "redis"
REDIS_PORT = int(os.environ.get("REDIS_PORT", "6379"))

# The client keeps a thread-safe connection pool; short timeouts so a dead
# Redis turns into a quick 503 instead of hanging requests and health checks.
db = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, decode_responses=True,
                 socket_timeout=2, socket_connect_timeout=2)

app = Flask(__name__)


def seed():
    """Store the catalogue unless already there.

    SET NX and SADD are idempotent, so three replicas starting at once (or a
    restarted one) never overwrite each other or reset the view counters.
    """
    pipe = db.pipeline()
    for p in CATALOGUE:
        doc = {"name": p["name"], "price": p["price"]}
        pipe.set(f"product:{p['id']}", json.dumps(doc), nx=True)
        pipe.sadd("products", p["id"])
    pipe.execute()


def ensure_seeded():
    """Re-seed if Redis lost the data (it keeps nothing across restarts)."""
    if not db.exists("products"):
        seed()


def product(pid, doc, views):
    return {"id": pid, **json.loads(doc), "views": int(views or 0)}


@app.get("/products")
def list_products():
    ensure_seeded()
    ids = sorted(db.smembers("products"), key=int)
    docs = db.mget([f"product:{i}" for i in ids]) if ids else []
    views = db.mget([f"views:{i}" for i in ids]) if ids else []
    products = [product(int(i), d, v)
                for i, d, v in zip(ids, docs, views) if d is not None]
    return jsonify(served_by=SERVED_BY, products=products)


@app.get("/products/<int:pid>")
def get_product(pid):
    ensure_seeded()
    doc = db.get(f"product:{pid}")
    if doc is None:
        return jsonify(served_by=SERVED_BY, error=f"no product {pid}"), 404
    views = db.incr(f"views:{pid}")  # this request is a view
    return jsonify(served_by=SERVED_BY, product=product(pid, doc, views))


@app.get("/health")
def health():
    try:
        db.ping()
    except redis.RedisError as e:
        return jsonify(served_by=SERVED_BY, status="redis unavailable",
                       error=str(e)), 503
    return jsonify(served_by=SERVED_BY, status="ok")


@app.errorhandler(404)
def not_found(e):
    return jsonify(served_by=SERVED_BY, error="not found"), 404


@app.errorhandler(redis.RedisError)
def redis_down(e):
    return jsonify(served_by=SERVED_BY, error=f"redis: {e}"), 503


if __name__ == "__main__":
    # plumb starts us only once Redis is healthy, but retry for a while anyway
    # (restarts, running by hand); give up loudly rather than serve nothing.
    for attempt in range(30):
        try:
            seed()
            break
        except redis.RedisError as e:
            print(f"{SERVED_BY}: seeding Redis at {REDIS_HOST}:{REDIS_PORT} "
                  f"failed ({e}), retrying", file=sys.stderr, flush=True)
            time.sleep(1)
    else:
        sys.exit(f"{SERVED_BY}: Redis unreachable, giving up")
    app.run(host=os.environ.get("HOST", "0.0.0.0"),
            port=int(os.environ.get("PORT", "5001")),
            threaded=True)

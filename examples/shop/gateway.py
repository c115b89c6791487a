"""gateway: the API gateway of the shop stack.

Forwards /api/products[/<id>] to the product replicas, spreading requests
round-robin over them itself (no load balancer in between), and fails over
to the next replica when one does not answer.

Environment (set by plumb):
  PLUMB_ADDRS_PRODUCT  comma-separated replica addresses, "ip" or "ip:port"
                       (port defaults to 5001); else the hostname "product"
Overrides for running outside plumb: HOST (listen address, default 0.0.0.0),
PORT (default 5000).
"""
import itertools
import os
import threading
import urllib.error
import urllib.request

from flask import Flask, Response, jsonify

PRODUCT_PORT = 5001
TIMEOUT = 2  # seconds, per replica attempt


def parse_addrs(value):
    """'10.89.0.5,10.89.0.6:15002' -> ['10.89.0.5:5001', '10.89.0.6:15002']"""
    out = []
    for entry in value.split(","):
        entry = entry.strip()
        if entry:
            out.append(entry if ":" in entry else f"{entry}:{PRODUCT_PORT}")
    return out


REPLICAS = parse_addrs(os.environ.get("PLUMB_ADDRS_PRODUCT", "")) \
    or [f"product:{PRODUCT_PORT}"]

# Flask's server is threaded: next() on a shared counter must be locked.
_counter = itertools.count()
_lock = threading.Lock()


def next_start():
    with _lock:
        return next(_counter) % len(REPLICAS)


app = Flask(__name__)


def forward(path):
    """GET path from the next replica; on failure try the others in turn.

    A 4xx is a real answer (e.g. unknown product) and is passed through;
    connection errors, timeouts and 5xx move on to the next replica.
    """
    start = next_start()
    errors = []
    for i in range(len(REPLICAS)):
        addr = REPLICAS[(start + i) % len(REPLICAS)]
        try:
            with urllib.request.urlopen(f"http://{addr}{path}",
                                        timeout=TIMEOUT) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        except (OSError, ValueError) as e:  # URLError, timeouts, resets
            errors.append(f"{addr}: {e}")
            continue
        if status >= 500:
            errors.append(f"{addr}: HTTP {status}")
            continue
        # Body passed through untouched, served_by included.
        return Response(body, status=status, mimetype="application/json")
    return jsonify(error="no product replica answered", tried=errors), 502


@app.get("/api/products")
def products():
    return forward("/products")


@app.get("/api/products/<int:pid>")
def product(pid):
    return forward(f"/products/{pid}")


@app.get("/health")
def health():
    return jsonify(status="ok", replicas=REPLICAS)


@app.errorhandler(404)
def not_found(e):
    return jsonify(error="not found"), 404


if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "0.0.0.0"),
            port=int(os.environ.get("PORT", "5000")),
            threaded=True)

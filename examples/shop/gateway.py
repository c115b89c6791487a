"""gateway: the API gateway of the shop stack.

Forwards /api/products[/<id>] to the product service by its name: plumb's DNS
gives the service's virtual IP, and plumb's load balancer (nftables, in the
kernel) spreads each new connection over the ready replicas, so `plumb
services` counts them. A connection that fails (a replica killed before the
balancer saw it) is tried again, up to ATTEMPTS times: each try is a new
connection, balanced anew.

The request's W3C `traceparent` header goes on to product: with `mesh = true`
the sidecars then join the hops into one trace (`plumb traces`); a service in a
traced mesh must pass it on, as here.

Overrides for running outside plumb: PRODUCT_URL (default
http://product:5001), HOST (listen address, default 0.0.0.0), PORT (default
5000).
"""
import os
import urllib.error
import urllib.request

from flask import Flask, Response, jsonify, request

UPSTREAM = os.environ.get("PRODUCT_URL", "http://product:5001")
TIMEOUT = 2  # seconds, per attempt
ATTEMPTS = 3

app = Flask(__name__)


def forward(path):
    """GET path from the product service; on failure try again (a new connection).

    A 4xx is a real answer (e.g. unknown product) and is passed through;
    connection errors, timeouts and 5xx are tried again.
    """
    errors = []
    headers = {}
    if "traceparent" in request.headers:
        headers["traceparent"] = request.headers["traceparent"]
    for attempt in range(ATTEMPTS):
        try:
            req = urllib.request.Request(f"{UPSTREAM}{path}", headers=headers)
            with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        except (OSError, ValueError) as e:  # URLError, timeouts, resets
            errors.append(f"attempt {attempt + 1}: {e}")
            continue
        if status >= 500:
            errors.append(f"attempt {attempt + 1}: HTTP {status}")
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
    return jsonify(status="ok", upstream=UPSTREAM)


@app.errorhandler(404)
def not_found(e):
    return jsonify(error="not found"), 404


if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "0.0.0.0"),
            port=int(os.environ.get("PORT", "5000")),
            threaded=True)

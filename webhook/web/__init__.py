"""The HTTP edge: the ASGI edge gunicorn runs (POST /webhook on one event loop per worker,
the rest through Flask), the Flask app with its WSGI fast path for POST /webhook, the
health and readiness routes, Prometheus metrics, and gunicorn's settings. A delivery is
verified, stored (or applied) and answered here; nothing below this package serves HTTP
requests.

May use: webhook.pipeline, webhook.stripe, webhook.database, webhook.core.
"""

"""The admin web app: accounts, rule editing with versions, operations, self test, metrics, JSON API.

Server-rendered pages (Jinja2) with a little JavaScript for polling; the
same data is available as JSON under ``/api`` (OpenAPI at ``/docs``).  See
docs/admin.md.  FastAPI and friends come with the ``web`` extra; the node
runs without them.
"""

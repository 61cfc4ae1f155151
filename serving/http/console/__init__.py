"""The operator's console at /console: adapters, routing review, experiments, live metrics.

Server-rendered pages (Jinja2 templates beside this file) with a little dependency-free
JavaScript; `session` guards them, `pages` reads and writes through the registry the admin
API uses, `readings` turns the server's Prometheus counters into per-adapter traffic.
"""

"""Switchboard's router: per request, the plain base, one adapter version, or a weighted mix.

An encoder (`encoder`, cached per text and per version in `cache`) embeds requests and route
examples; a scorer (`scorers`: linear, centroid, knn) scores them; a policy (`decision`)
decides. `router.Router` keeps the index live against the registry. Imports `registry` only.
"""

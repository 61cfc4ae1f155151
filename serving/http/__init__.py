"""The HTTP edge: the OpenAI-compatible API, admin API, keys, limits, errors and metrics."""

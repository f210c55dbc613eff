"""``vqpipe serve``: an online scoring service on Ray Serve (the HTTP contract in docs/serve.md).

* :mod:`vqpipe.service.body` — a request body (JSON or multipart) → items; the limits.
* :mod:`vqpipe.service.column` — one scorer: decode an item as the batch pipeline does, score a
  batch of prepared items (pure Python, no Serve: the replica and the tests share it).
* :mod:`vqpipe.service.routes` — the HTTP routes as plain async code (status, JSON payload).
* :mod:`vqpipe.service.config` — what a service is made of, from the CLI or a Serve config.
* :mod:`vqpipe.service.replica` — a column's scorer as a replica runs it (loading, batches).
* :mod:`vqpipe.service.app` — the Ray Serve deployments (imports Ray Serve).
"""

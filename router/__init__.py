"""Router: the cascade, its YAML config, policies, inputs, decisions, verdict cache, escalation budget, verdict log, metrics and the HTTP server."""

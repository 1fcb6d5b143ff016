"""Router: the cascade, its YAML config, policies, decisions (and, later, cache, log, server)."""

"""User-facing interfaces: command line, web UI and HTTP API (they depend on pipelines, never the reverse)."""

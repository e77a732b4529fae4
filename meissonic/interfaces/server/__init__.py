"""HTTP API (FastAPI) and the sampler options shared with the web UI. Needs the `web` extra."""

from .app import ServerSettings, create_app
from .service import GenerationService

__all__ = ["GenerationService", "ServerSettings", "create_app"]

"""The cloud side: the parameter service (FastAPI app, micro-batcher, generator service)."""

from duet.cloud.app import create_app
from duet.cloud.settings import Settings

__all__ = ["Settings", "create_app"]

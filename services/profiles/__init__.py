"""profiles: normalized events in, one profile per customer; profile changes and contacts out."""

from services.profiles.app import SPEC, create_app

__all__ = ["SPEC", "create_app"]

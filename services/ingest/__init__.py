"""ingest: raw checkouts, customer and interaction events in; normalized, pseudonymized events out."""

from services.ingest.app import create_app

__all__ = ["create_app"]

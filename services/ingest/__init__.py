"""ingest: raw checkouts, customer and interaction events in; normalized, pseudonymized events out."""

from services.ingest.app import SPEC, create_app

__all__ = ["SPEC", "create_app"]

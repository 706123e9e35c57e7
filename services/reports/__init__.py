"""reports: events, offers and deliveries in, campaign, product, store and segment reports out."""

from services.reports.app import SPEC, create_app

__all__ = ["SPEC", "create_app"]

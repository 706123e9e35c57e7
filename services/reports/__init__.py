"""reports: events, offers, deliveries and campaigns in; the reports, charts and page out."""

from services.reports.app import SPEC, create_app

__all__ = ["SPEC", "create_app"]

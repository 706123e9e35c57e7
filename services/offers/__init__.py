"""The offers service: coupon rules over profile changes and calendar days, redemptions, expiry."""

from services.offers.app import SPEC, create_app

__all__ = ["SPEC", "create_app"]

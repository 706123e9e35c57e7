"""The offers service: coupon rules over profile changes and calendar days, redemptions, expiry."""

from services.offers.app import create_app

__all__ = ["create_app"]

"""The profiles service: folds normalized customer events into one profile per customer."""

from services.profiles.app import create_app

__all__ = ["create_app"]

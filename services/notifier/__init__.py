"""The notifier: e-mails each issued offer once (SMTP or .eml outbox), honouring consent and quiet hours."""

from services.notifier.app import create_app

__all__ = ["create_app"]

"""notifier: e-mails each issued offer once (SMTP or .eml outbox), honouring consent and quiet hours."""

from services.notifier.app import SPEC, create_app

__all__ = ["SPEC", "create_app"]

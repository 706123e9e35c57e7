"""crm-stream's four services (ingest, profiles, offers, notifier) and the `crm` command line."""

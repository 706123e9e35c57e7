"""crm-stream's shared package: event contracts, topic names, settings, logging and common plumbing."""

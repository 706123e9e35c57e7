"""The reports service: campaign, product, store and segment reports from a read model of events."""

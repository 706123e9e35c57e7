"""The secret keys every test gives the services it starts (`crm run` refuses development
keys and keys shorter than 32 bytes): fixed, so tests can compute card ids and coupon codes."""

from __future__ import annotations

from shared.keys import development_keys

SERVICE_KEYS: dict[str, str] = {
    variable: f"test-{variable.lower().replace('_', '-')}-of-at-least-32-bytes"
    for variable in development_keys()
}
"""Environment variable -> its test key, for every key that has a development default."""

CARD_KEY = SERVICE_KEYS["CRM_CARD_KEY"]
COUPON_KEY = SERVICE_KEYS["CRM_COUPON_KEY"]
UNSUBSCRIBE_KEY = SERVICE_KEYS["CRM_UNSUBSCRIBE_KEY"]

"""The offers service, declared: it folds `crm.profiles.changed` into its customers' read model
and runs the offer rules on it and on each `crm.clock` day, saves, then publishes on
`crm.offers`."""

from __future__ import annotations

import dataclasses

from services.offers.domain import OfferEngine
from services.offers.service import OffersService
from services.offers.settings import OfferRules, OffersSettings
from services.offers.store import OffersRepository, open_repository
from shared.edge import json_decoder
from shared.events import ClockTicked, ProfileChanged
from shared.settings import Settings
from shared.skeleton import ServiceApp, ServiceSpec
from shared.topics import CLOCK, GROUP_OFFERS, PROFILES_CHANGED


def _service(
    settings: Settings, repository: OffersRepository, *, rules: OfferRules, page_size: int
) -> OffersService:
    engine = OfferEngine(
        rules=rules,
        coupon_key=settings.privacy.coupon_key.get_secret_value().encode(),
        calendar=settings.calendar,
    )
    return OffersService(engine=engine, repository=repository, page_size=page_size)


def build(settings: Settings, repository: OffersRepository) -> OffersService:
    """The service on an open store, its rules from `CRM_RULES_FILE` (or the defaults)."""
    offers_settings = OffersSettings()
    return _service(
        settings,
        repository,
        rules=offers_settings.rules(),
        page_size=offers_settings.offers_page_size,
    )


async def check(settings: Settings) -> None:
    """A rules file that does not describe valid rules refuses start-up, before the store opens."""
    OffersSettings().rules()


SPEC: ServiceSpec[OffersRepository, OffersService] = ServiceSpec(
    name="offers",
    group=GROUP_OFFERS,
    decoders={PROFILES_CHANGED: json_decoder(ProfileChanged), CLOCK: json_decoder(ClockTicked)},
    open_store=lambda settings: open_repository(settings.store),
    build=build,
    order="save_then_publish",
    check=check,
)


def create_app(
    settings: Settings | None = None,
    *,
    repository: OffersRepository | None = None,
    rules: OfferRules | None = None,
    offers_settings: OffersSettings | None = None,
) -> ServiceApp[OffersService]:
    """The offers service; a passed repository is used as is (and not closed).

    Rules come from `rules`, else from `CRM_RULES_FILE`: an invalid file is refused here.
    """
    offers_settings = offers_settings or OffersSettings()
    chosen = rules if rules is not None else offers_settings.rules()
    page_size = offers_settings.offers_page_size
    # The rules are checked above; the declaration's check would read `CRM_RULES_FILE` again,
    # which these rules may not come from.
    return ServiceApp(
        dataclasses.replace(SPEC, check=None),
        settings,
        repository=repository,
        build=lambda settings, repo: _service(settings, repo, rules=chosen, page_size=page_size),
    )

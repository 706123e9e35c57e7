"""The offers service, declared: it folds `crm.profiles.changed` and `crm.clock` into each
customer's ledger, takes the offer decisions again from the earliest time new facts touch,
publishes what changed on `crm.offers`, then saves; it serves the till and the agents'
"why" of a coupon, and keeps each offer's e-mail outcome from `crm.deliveries`."""

from __future__ import annotations

import dataclasses
from functools import partial

from services.offers.api import till_routes
from services.offers.engine import OfferDecider
from services.offers.service import OffersService
from services.offers.settings import OfferRules, OffersSettings
from services.offers.store import OffersRepository, open_repository
from shared.edge import foreign, json_decoder
from shared.events import ClockTicked, DeliveryRecorded, ProfileChanged
from shared.settings import Settings
from shared.skeleton import AfterReplay, ServiceApp, ServiceSpec
from shared.topics import CLOCK, DELIVERIES, GROUP_OFFERS, OFFERS, PROFILES_CHANGED


def _service(
    settings: Settings,
    repository: OffersRepository,
    *,
    rules: OfferRules,
    offers_settings: OffersSettings,
) -> OffersService:
    decider = OfferDecider(
        rules=rules,
        coupon_key=settings.privacy.coupon_key.get_secret_value().encode(),
        calendar=settings.calendar,
        lateness=offers_settings.allowed_lateness,
    )
    return OffersService(
        decider=decider, repository=repository, page_size=offers_settings.offers_page_size
    )


def build(settings: Settings, repository: OffersRepository) -> OffersService:
    """The service on an open store, its rules from `CRM_RULES_FILE` (or the defaults)."""
    offers_settings = OffersSettings()
    return _service(
        settings, repository, rules=offers_settings.rules(), offers_settings=offers_settings
    )


async def check(settings: Settings) -> None:
    """A rules file that does not describe valid rules refuses start-up, before the store opens."""
    OffersSettings().rules()


SPEC: ServiceSpec[OffersRepository, OffersService] = ServiceSpec(
    name="offers",
    group=GROUP_OFFERS,
    decoders={
        PROFILES_CHANGED: json_decoder(ProfileChanged),
        CLOCK: json_decoder(ClockTicked),
        DELIVERIES: foreign(json_decoder(DeliveryRecorded)),
    },
    open_store=lambda settings: open_repository(settings.store),
    build=build,
    order="publish_then_save",
    routes=till_routes,
    check=check,
    after_replay=AfterReplay(OFFERS, OffersService.keep_published),
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
    # The rules are checked above; the declaration's check would read `CRM_RULES_FILE` again,
    # which these rules may not come from.
    return ServiceApp(
        dataclasses.replace(SPEC, check=None),
        settings,
        repository=repository,
        build=partial(_service, rules=chosen, offers_settings=offers_settings),
    )

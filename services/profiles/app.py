"""The profiles service, declared: it folds `crm.events` into profiles and `crm.offers` into
each customer's coupons, publishes profile changes and contacts, then saves; it serves the
call-centre look-up."""

from __future__ import annotations

from services.profiles.api import lookup_routes
from services.profiles.service import ProfilesService
from services.profiles.settings import ProfilesSettings
from services.profiles.store import ProfilesRepository, open_repository
from shared.edge import foreign, json_decoder
from shared.events import NORMALIZED_EVENT, OFFER_EVENT
from shared.settings import Settings
from shared.skeleton import ServiceApp, ServiceSpec
from shared.topics import EVENTS, GROUP_PROFILES, OFFERS


def build(settings: Settings, repository: ProfilesRepository) -> ProfilesService:
    return ProfilesService(repository, options=ProfilesSettings().fold_options())


SPEC: ServiceSpec[ProfilesRepository, ProfilesService] = ServiceSpec(
    name="profiles",
    group=GROUP_PROFILES,
    decoders={EVENTS: json_decoder(NORMALIZED_EVENT), OFFERS: foreign(json_decoder(OFFER_EVENT))},
    open_store=lambda settings: open_repository(settings.store),
    build=build,
    order="publish_then_save",
    routes=lookup_routes,
)


def create_app(
    settings: Settings | None = None,
    *,
    repository: ProfilesRepository | None = None,
    profile_settings: ProfilesSettings | None = None,
) -> ServiceApp[ProfilesService]:
    """The profiles service; a passed repository is used as is (and not closed)."""
    options = (profile_settings or ProfilesSettings()).fold_options()
    return ServiceApp(
        SPEC,
        settings,
        repository=repository,
        build=lambda _settings, repo: ProfilesService(repo, options=options),
    )

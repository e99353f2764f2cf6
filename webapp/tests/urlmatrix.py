"""The site's URL patterns, read from the resolver, so a new endpoint is covered by the matrix tests
without anyone remembering to list it. Django admin has its own (staff-only) checks and is left out."""
import re

from django.urls import URLPattern, URLResolver, get_resolver

SKIPPED_NAMESPACES = {"admin"}
_PARAM = re.compile(r"<(?:(?P<converter>\w+):)?(?P<name>\w+)>")


def _walk(patterns, prefix: str = ""):
    for entry in patterns:
        route = str(entry.pattern)
        if isinstance(entry, URLResolver):
            if entry.namespace in SKIPPED_NAMESPACES or entry.app_name in SKIPPED_NAMESPACES:
                continue
            yield from _walk(entry.url_patterns, prefix + route)
        elif isinstance(entry, URLPattern):
            yield prefix + route


def site_patterns() -> list[str]:
    """Every route of the site as '/p/<slug:slug>/label/', in resolver order (admin left out)."""
    return ["/" + route.lstrip("^").rstrip("$") for route in _walk(get_resolver().url_patterns)]


def pattern_params(pattern: str) -> list[str]:
    return [m.group("name") for m in _PARAM.finditer(pattern)]


def fill_pattern(pattern: str, values: dict) -> str:
    """The URL with each <conv:name> replaced by values[name]; KeyError names a parameter nobody filled,
    so a new kind of endpoint makes the matrix fail until it says which object that parameter is."""
    return _PARAM.sub(lambda m: str(values[m.group("name")]), pattern)


# Who may read (GET) and who may write (POST) each route: the lowest role that may, in the order
# anonymous < labeler < researcher < admin (a Django superuser, member of no project); "owner" is only the
# labeler who holds the lease; None: the route does not answer that method (405). Roles are per project:
# a labeler or researcher of another project gets 404 on this one's routes (test_authz_matrix.py).
# A new route fails test_authz_matrix until it is listed here.
ANON, LABELER, RESEARCHER, ADMIN, OWNER = "anonymous", "labeler", "researcher", "admin", "owner"
ROUTE_ROLES: dict[str, tuple[str | None, str | None]] = {
    "/admin/login/": (ANON, ANON),
    "/accounts/login/": (ANON, ANON),
    "/accounts/password_change/": (LABELER, LABELER),
    "/accounts/password_change/done/": (LABELER, None),
    "/accounts/logout/": (None, ANON),
    "/api/schema/": (LABELER, None),
    "/api/docs/": (LABELER, None),
    "/api/projects/": (LABELER, None),
    "/api/hooks/": (LABELER, None),  # names only: the operator's registered code hooks
    "/api/projects/<slug:slug>/": (LABELER, None),
    "/api/projects/<slug:slug>/assignments/next/": (None, LABELER),
    "/api/projects/<slug:slug>/import/": (None, RESEARCHER),
    "/api/projects/<slug:slug>/export/": (RESEARCHER, None),
    "/api/projects/<slug:slug>/rankings/": (LABELER, None),  # a labeler's own rankings only
    "/api/projects/<slug:slug>/quality/": (RESEARCHER, None),
    "/api/projects/<slug:slug>/quality/settings/": (None, RESEARCHER),
    "/api/projects/<slug:slug>/quality/weights/": (None, RESEARCHER),
    "/api/projects/<slug:slug>/quality/exclusions/": (None, RESEARCHER),
    "/api/projects/<slug:slug>/quality/gold/": (None, RESEARCHER),
    "/api/projects/<slug:slug>/quality/reviews/": (None, RESEARCHER),
    "/api/projects/<slug:slug>/quality/ai-labelers/": (RESEARCHER, RESEARCHER),
    "/api/projects/<slug:slug>/quality/ai-labelers/run/": (None, RESEARCHER),
    "/api/projects/<slug:slug>/quality/selections/": (RESEARCHER, RESEARCHER),
    "/api/projects/<slug:slug>/quality/consensus/": (RESEARCHER, None),
    "/api/projects/<slug:slug>/arenas/": (LABELER, RESEARCHER),
    "/api/projects/<slug:slug>/arenas/<int:arena_id>/next/": (LABELER, None),
    "/api/projects/<slug:slug>/arenas/<int:arena_id>/votes/": (None, LABELER),
    "/api/projects/<slug:slug>/arena/leaderboard/": (RESEARCHER, None),
    "/api/assignments/<int:assignment_id>/ranking/": (None, OWNER),
    "/api/assignments/<int:assignment_id>/skip/": (None, OWNER),
    "/api/projects/<slug:slug>/runs/": (RESEARCHER, RESEARCHER),  # labelers see no training
    "/api/projects/<slug:slug>/artifacts/": (RESEARCHER, None),
    "/api/projects/<slug:slug>/rounds/": (None, RESEARCHER),
    "/api/projects/<slug:slug>/lineage/": (RESEARCHER, None),
    "/api/runs/<int:run_id>/": (RESEARCHER, None),
    "/api/runs/<int:run_id>/cancel/": (None, RESEARCHER),
    "/api/artifacts/<int:artifact_id>/": (RESEARCHER, None),
    "/api/artifacts/<int:artifact_id>/download/": (RESEARCHER, None),
    "/training/projects/<slug:slug>/runs/": (RESEARCHER, RESEARCHER),
    "/training/projects/<slug:slug>/base-models/": (None, RESEARCHER),
    "/training/projects/<slug:slug>/lineage/": (RESEARCHER, None),
    "/training/projects/<slug:slug>/lineage/start-round/": (None, RESEARCHER),
    "/training/projects/<slug:slug>/lineage/policy-run/": (None, RESEARCHER),
    "/training/projects/<slug:slug>/lineage/import/": (None, RESEARCHER),
    "/training/runs/<int:run_id>/": (RESEARCHER, None),
    "/training/runs/<int:run_id>/metrics.json": (RESEARCHER, None),
    "/training/runs/<int:run_id>/cancel/": (None, RESEARCHER),
    "/training/artifacts/<int:artifact_id>/": (RESEARCHER, None),
    "/training/artifacts/<int:artifact_id>/download/": (RESEARCHER, None),
    "/": (LABELER, None),
    "/p/<slug:slug>/": (LABELER, None),
    "/p/<slug:slug>/label/": (LABELER, None),
    "/p/<slug:slug>/label/last/": (LABELER, None),  # the user's own last ranking, to edit or withdraw
    "/p/<slug:slug>/import/": (None, RESEARCHER),
    "/p/<slug:slug>/export/": (RESEARCHER, None),
    "/p/<slug:slug>/quality/": (RESEARCHER, None),
    "/p/<slug:slug>/quality/settings/": (None, RESEARCHER),
    "/p/<slug:slug>/quality/weights/": (None, RESEARCHER),
    "/p/<slug:slug>/quality/exclusion/": (None, RESEARCHER),
    "/p/<slug:slug>/quality/review/<int:prompt_id>/": (None, RESEARCHER),
    "/p/<slug:slug>/quality/gold/": (None, RESEARCHER),
    "/p/<slug:slug>/quality/ai-labelers/": (None, RESEARCHER),
    "/p/<slug:slug>/quality/ai-labelers/run/": (None, RESEARCHER),
    "/p/<slug:slug>/quality/selection/": (None, RESEARCHER),
    "/p/<slug:slug>/quality/consensus.jsonl": (RESEARCHER, None),
    "/p/<slug:slug>/arena/": (LABELER, None),
    "/p/<slug:slug>/arena/create/": (None, RESEARCHER),
    "/p/<slug:slug>/arena/<int:arena_id>/vote/": (LABELER, LABELER),
    "/p/<slug:slug>/arena/<int:arena_id>/close/": (None, RESEARCHER),
    "/assignments/<int:assignment_id>/submit/": (None, OWNER),
    "/assignments/<int:assignment_id>/skip/": (None, OWNER),
    "/assignments/<int:assignment_id>/edit/": (None, OWNER),
    "/assignments/<int:assignment_id>/withdraw/": (None, OWNER),
}
ROLE_ORDER = (ANON, LABELER, RESEARCHER, ADMIN)


def role_may(*, needed: str | None, role: str, is_owner: bool) -> bool:
    """Whether a user of ``role`` (the lease's holder when ``is_owner``) may use a route that needs ``needed``."""
    if needed is None:
        return False
    if needed == OWNER:
        return is_owner
    return ROLE_ORDER.index(role) >= ROLE_ORDER.index(needed)

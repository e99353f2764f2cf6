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

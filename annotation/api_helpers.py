"""What every JSON API view of the app shares: the error shape, input validation and the manager check.

Every rejected input is a 400 ``{"error": message, "location": where}``; researcher actions give labelers
403 and non-members 404 (through the selectors). Used by annotation's API modules and lab's arena API.
"""
from drf_spectacular.utils import OpenApiResponse
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from annotation import selectors
from annotation.serializers import ErrorSerializer

ERRORS = {400: ErrorSerializer, 403: OpenApiResponse(description="Not allowed for your role."),
          404: OpenApiResponse(description="No such object, or not yours.")}


def error_response(message: str, location: str = "", *, status_code: int = 400) -> Response:
    return Response({"error": message, "location": location}, status=status_code)


def _first_error(errors, path: str = "") -> tuple[str, str]:
    """DRF's nested error dict → (message, location) of the first error, e.g. ("...", "tiers[0][1]")."""
    if isinstance(errors, dict):
        key, value = next(iter(errors.items()))
        if key == "non_field_errors":
            return _first_error(value, path)
        where = f"{path}[{key}]" if isinstance(key, int) or path else str(key)
        return _first_error(value, where)
    if isinstance(errors, list) and errors:
        return _first_error(errors[0], path)
    return str(errors), path


def validated(serializer_class, data) -> tuple[dict | None, Response | None]:
    """(validated data, None), or (None, a 400 naming the first error and where it is)."""
    serializer = serializer_class(data=data)
    if serializer.is_valid():
        return serializer.validated_data, None
    message, location = _first_error(serializer.errors)
    return None, error_response(message, location)


def manageable_project(request: Request, slug: str):
    """The project, if the user may manage it: 404 for non-members, 403 for labelers."""
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    if not selectors.user_can_manage(user=request.user, project=project):
        raise PermissionDenied("Only researchers of this project and admins may do this.")
    return project

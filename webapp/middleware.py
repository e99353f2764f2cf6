"""Content-Security-Policy header (scripts only from our own static files, never inline); the upload size cap."""
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response


class UploadSizeLimitMiddleware:
    """Refuse a request body with 413 from its Content-Length, before any of it is read (Django's parsers
    never read past Content-Length): a multipart body (a file upload) over ``MAX_UPLOAD_BYTES``, any other
    body (JSON for the API, which DRF would otherwise read whole) over ``DATA_UPLOAD_MAX_MEMORY_SIZE``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        multipart = request.META.get("CONTENT_TYPE", "").startswith("multipart/")
        limit = settings.MAX_UPLOAD_BYTES if multipart else settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if length > limit:
            what = "may be uploaded" if multipart else "are accepted in a request body that is not a file upload"
            message = f"The request body is {length} bytes; at most {limit} bytes {what}."
            if request.path.startswith("/api/"):
                return JsonResponse({"error": message, "location": "file"}, status=413)
            return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
        return self.get_response(request)

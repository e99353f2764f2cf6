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
    """Refuse a request body over ``MAX_UPLOAD_BYTES`` with 413 from its Content-Length, before any of it is
    read (Django's multipart parser never reads past Content-Length). Uploads are the only bodies this big:
    other bodies are held to ``DATA_UPLOAD_MAX_MEMORY_SIZE`` by Django itself."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.MAX_UPLOAD_BYTES
        if length > limit:
            message = f"The request body is {length} bytes; at most {limit} bytes may be uploaded."
            if request.path.startswith("/api/"):
                return JsonResponse({"error": message, "location": "file"}, status=413)
            return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
        return self.get_response(request)

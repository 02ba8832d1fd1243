"""The API answers in English; the admin speaks LANGUAGE_CODE (Chinese) to operators."""

from django.utils import translation


class ApiLanguageMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/admin/"):
            return self.get_response(request)
        with translation.override("en"):
            return self.get_response(request)

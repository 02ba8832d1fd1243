"""Query parameters checked as strictly as bodies: each named once, of its type, within its bounds."""

import re

from rest_framework.pagination import PageNumberPagination

from ..errors import PayloadInvalid
from ..validation import has_forbidden_chars
from .schema import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX

_INTEGER_RE = re.compile(r"-?[0-9]+")
# More significant digits than any bound a parameter has: out of range, without converting it.
_MAX_DIGITS = 18


class Pagination(PageNumberPagination):
    """Every list endpoint pages the same way: `page`, and `page_size` up to PAGE_SIZE_MAX."""

    page_size = PAGE_SIZE_DEFAULT
    page_size_query_param = "page_size"
    max_page_size = PAGE_SIZE_MAX


class QueryParams:
    """Reads a request's query parameters, collecting every error; `check()` raises them in one 400."""

    def __init__(self, request):
        self.params = request.query_params
        self.errors: list[dict] = []

    def _error(self, name: str, code: str, message: str) -> None:
        self.errors.append({"field": name, "code": code, "message": message})

    def _single(self, name: str) -> str | None:
        values = self.params.getlist(name)
        if not values:
            return None
        if len(values) > 1:
            self._error(name, "repeated", "Give this parameter at most once.")
            return None
        return values[0]

    def integer(self, name: str, *, minimum: int, maximum: int) -> int | None:
        """An integer from minimum to maximum, the bounds the schema states for the parameter."""
        raw = self._single(name)
        if raw is None:
            return None
        if not _INTEGER_RE.fullmatch(raw):
            self._error(name, "invalid_type", "Must be an integer.")
            return None
        value = int(raw) if len(raw.lstrip("-0")) <= _MAX_DIGITS else None
        if value is None or not minimum <= value <= maximum:
            self._error(name, "out_of_range", f"Must be between {minimum} and {maximum}.")
            return None
        return value

    def choice(self, name: str, choices: list[str]) -> str | None:
        raw = self._single(name)
        if raw is not None and raw not in choices:
            self._error(name, "invalid_choice", f"Must be one of: {', '.join(choices)}.")
            return None
        return raw

    def text(self, name: str, *, max_length: int) -> str | None:
        raw = self._single(name)
        if raw is None:
            return None
        if len(raw) > max_length:
            self._error(name, "too_long", f"At most {max_length} characters.")
            return None
        if has_forbidden_chars(raw):
            self._error(name, "invalid_characters", "Contains control or invisible formatting characters.")
            return None
        return raw

    def check(self) -> None:
        if self.errors:
            raise PayloadInvalid(f"The request has {len(self.errors)} invalid query parameter(s).",
                                 errors=self.errors)

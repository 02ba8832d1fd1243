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
            self._error(name, "repeated", "此参数最多只能出现一次。")
            return None
        return values[0]

    def integer(self, name: str, *, minimum: int, maximum: int) -> int | None:
        """An integer from minimum to maximum, the bounds the schema states for the parameter."""
        raw = self._single(name)
        if raw is None:
            return None
        if not _INTEGER_RE.fullmatch(raw):
            self._error(name, "invalid_type", "必须是整数。")
            return None
        value = int(raw) if len(raw.lstrip("-0")) <= _MAX_DIGITS else None
        if value is None or not minimum <= value <= maximum:
            self._error(name, "out_of_range", f"必须在 {minimum} 到 {maximum} 之间。")
            return None
        return value

    def choice(self, name: str, choices: list[str]) -> str | None:
        raw = self._single(name)
        if raw is not None and raw not in choices:
            self._error(name, "invalid_choice", f"必须是以下之一：{', '.join(choices)}。")
            return None
        return raw

    def text(self, name: str, *, max_length: int) -> str | None:
        raw = self._single(name)
        if raw is None:
            return None
        if len(raw) > max_length:
            self._error(name, "too_long", f"最多 {max_length} 个字符。")
            return None
        if has_forbidden_chars(raw):
            self._error(name, "invalid_characters", "含有控制字符或不可见的格式字符。")
            return None
        return raw

    def check(self) -> None:
        if self.errors:
            raise PayloadInvalid(f"请求中有 {len(self.errors)} 个查询参数无效。",
                                 errors=self.errors)

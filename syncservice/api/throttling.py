"""Inbound rate limiting per API client, shared by every server process through the database cache."""

from django.conf import settings
from django.core.cache import caches
from rest_framework.throttling import SimpleRateThrottle

from ..models import ApiClient


class ClientRateThrottle(SimpleRateThrottle):
    """N requests per period per client: the client's own `throttle_rate`, else API_THROTTLE_RATE."""

    scope = "client"

    def __init__(self):
        # The rate depends on the client, known only in allow_request.
        self.cache = caches[settings.API_THROTTLE_CACHE]

    def allow_request(self, request, view):
        client = request.user
        if not isinstance(client, ApiClient):
            return True  # staff sessions are not throttled
        self.rate = client.throttle_rate or settings.API_THROTTLE_RATE
        if not self.rate:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request, view):
        return f"throttle_client_{request.user.pk}"

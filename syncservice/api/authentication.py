"""Bearer-token authentication of API clients."""

import datetime as dt
import hmac

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from ..models import ApiClient

LAST_USED_RESOLUTION = dt.timedelta(minutes=5)


class BearerTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <token>`; the token is looked up by its SHA-256 digest."""

    keyword = b"bearer"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("Authorization 请求头格式错误：应为“Bearer <令牌>”。")
        try:
            token = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationFailed("令牌无效。") from None
        digest = ApiClient.hash_token(token)
        client = ApiClient.objects.filter(token_hash=digest).first()
        if client is None or not hmac.compare_digest(client.token_hash, digest):
            raise AuthenticationFailed("令牌无效。")
        if not client.is_active:
            raise AuthenticationFailed("此 API 客户端已停用。")
        now = timezone.now()
        if client.last_used_at is None or now - client.last_used_at > LAST_USED_RESOLUTION:
            ApiClient.objects.filter(pk=client.pk).update(last_used_at=now)
        return client, None

    def authenticate_header(self, request):
        return 'Bearer realm="account-provisioning"'


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A client token from `python manage.py create_api_client`.",
        }

"""Probes for load balancers: /healthz (the process answers) and /readyz (database and pipeline)."""

import logging

from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .selectors import overdue_stages

logger = logging.getLogger(__name__)


@never_cache
@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        overdue = overdue_stages()
    except DatabaseError as exc:
        logger.warning("readiness check: database unreachable: %s", exc)
        return JsonResponse({"status": "unavailable", "database": "unreachable", "overdueStages": []}, status=503)
    body = {"status": "ready" if not overdue else "unavailable", "database": "ok", "overdueStages": overdue}
    return JsonResponse(body, status=200 if not overdue else 503)

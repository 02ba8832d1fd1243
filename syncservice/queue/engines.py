"""How a claim and a fenced result write run on each database family, behind one interface.

PostgreSQL: set-based SQL, one round trip per claim (pick with FOR UPDATE SKIP LOCKED, mark, read the
related rows) and one statement per batch of results. Elsewhere (SQLite, the embedded default, one worker
at a time): the ORM. Both keep the same rules; the queue's contract tests run against each.
"""

import datetime as dt
import json

from django.db import connection, models
from django.db.models import Case, F, When
from django.db.models.base import ModelState

from ..db.bulk import update_from_arrays
from ..db.locking import skip_locked
from .table import JobTable


class Claimed:
    """A job as claimed, with the claim's lease token and whether the claim counted an attempt."""

    __slots__ = ("job", "token", "counted")

    def __init__(self, job: models.Model, token: str, counted: bool):
        self.job, self.token, self.counted = job, token, counted


class Engine:
    """A claim, which differs between database families, and the fenced write of results."""

    # Whether threads with connections of their own may write while the main thread does (not SQLite's).
    concurrent_writers = True

    def claim(self, table: JobTable, *, lane, limit: int, worker: str, token: str, now: dt.datetime,
              expires: dt.datetime) -> list[Claimed]:
        raise NotImplementedError

    def write_fenced(self, table: JobTable, jobs: list[tuple[models.Model, str]], now: dt.datetime) -> set:
        """Write each job's result fields where its claim's lease still holds; return the ids written.

        One statement for the batch on PostgreSQL, a fenced update per row elsewhere (db.bulk decides).
        """
        if not jobs:
            return set()
        jobs = sorted(jobs, key=lambda pair: pair[0].pk)  # rows locked in id order, like every other writer
        meta = table.model._meta
        return set(update_from_arrays(
            table.model, match={"id": [job.pk for job, _ in jobs], "lease_token": [token for _, token in jobs]},
            values={name: [getattr(job, meta.get_field(name).attname) for job, _ in jobs]
                    for name in table.written_fields()},
            constants=cleared_lease(table, now), where={"status": table.running}, returning="id",
        ))


def _lease_columns(table: JobTable, *, token: str, worker: str, expires, now) -> dict:
    columns = {"status": table.running, "lease_token": token, "lease_expires_at": expires}
    if table.worker_field:
        columns[table.worker_field] = worker
    if table.updated_field:
        columns[table.updated_field] = now
    return columns


def cleared_lease(table: JobTable, now) -> dict:
    columns = {"lease_token": "", "lease_expires_at": None}
    if table.worker_field:
        columns[table.worker_field] = ""
    if table.updated_field:
        columns[table.updated_field] = now
    return columns


class OrmEngine(Engine):
    concurrent_writers = False

    def claim(self, table, *, lane, limit, worker, token, now, expires):
        model = table.model
        due = model.objects.filter(table.lane_filter(lane), status__in=table.ready, next_attempt_at__lte=now)
        jobs = list(skip_locked(due.select_related(*table.select_related).order_by(*table.order))[:limit])
        if not jobs:
            return []
        lease = _lease_columns(table, token=token, worker=worker, expires=expires, now=now)
        attempts = F("attempts") + 1
        if table.polling:
            attempts = Case(When(status=table.polling, then=F("attempts")), default=F("attempts") + 1)
        model.objects.filter(id__in=[job.pk for job in jobs]).update(attempts=attempts, **lease)
        claimed = []
        for job in jobs:
            counted = job.status != table.polling
            job.attempts += counted
            for name, value in lease.items():
                setattr(job, name, value)
            claimed.append(Claimed(job, token, counted))
        return claimed


def _order_sql(table: JobTable, alias: str = "") -> str:
    parts = []
    for name in table.order:
        column = table.model._meta.get_field(name.lstrip("-")).column
        parts.append(f'{alias + "." if alias else ""}"{column}"' + (" DESC" if name.startswith("-") else ""))
    return ", ".join(parts)


class PostgresEngine(Engine):
    def claim(self, table, *, lane, limit, worker, token, now, expires):
        model = table.model
        meta = model._meta
        lease = _lease_columns(table, token=token, worker=worker, expires=expires, now=now)
        lane_sql, lane_params = "", []
        if table.lane_field and lane is not None:
            lane_sql, lane_params = f'"{meta.get_field(table.lane_field).column}" = %s AND ', [lane]
        ready = ", ".join(["%s"] * len(table.ready))
        sets = ", ".join(f'"{meta.get_field(name).column}" = %s' for name in lease)
        counted = "TRUE"
        if table.polling:
            counted = "pk.status <> %s"
        job_fields = [f.attname for f in meta.concrete_fields]
        related = self._related(table)
        select = ", ".join(f't."{meta.get_field(name).column}"' for name in job_fields)
        joins, related_cte = "", ""
        if related:
            field, related_model, fields = related
            columns = ", ".join(f'p."{name}"' for name in fields)
            related_cte = (f', related AS (SELECT {columns} FROM "{related_model._meta.db_table}" p '
                           f'WHERE p.id = ANY(ARRAY(SELECT "{field.column}" FROM claimed)))')
            select += ", " + columns
            joins = f' JOIN related p ON p.id = t."{field.column}"'
        # Picked ids are looked up as `= ANY(ARRAY(…))`, an index condition, rather than joined: PostgreSQL
        # would hash the whole table for a join of a few hundred rows. `picked` keeps each row's status
        # before the claim: a poll of accepted work is not a new attempt.
        sql = f"""WITH picked AS (
                SELECT id, status FROM "{meta.db_table}"
                WHERE {lane_sql}status IN ({ready}) AND next_attempt_at <= %s
                ORDER BY {_order_sql(table)} LIMIT %s FOR UPDATE SKIP LOCKED
            ), claimed AS (
                UPDATE "{meta.db_table}" t SET {sets},
                    attempts = CASE WHEN t.status = %s THEN t.attempts ELSE t.attempts + 1 END
                WHERE t.id = ANY(ARRAY(SELECT id FROM picked)) RETURNING t.*
            ){related_cte}
            SELECT {select}, {counted} FROM claimed t JOIN picked pk ON pk.id = t.id{joins}
            ORDER BY {_order_sql(table, "t")}"""
        params = [*lane_params, *table.ready, now, limit, *lease.values(), table.polling or ""]
        if table.polling:
            params.append(table.polling)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        n = len(job_fields)
        claimed = []
        for row in rows:
            job = _loaded(model, job_fields, row[:n])
            if related:
                field, related_model, fields = related
                field.set_cached_value(job, _loaded(related_model, fields, row[n:-1]))
            claimed.append(Claimed(job, token, bool(row[-1])))
        if claimed and table.select_related and not related:
            models.prefetch_related_objects([c.job for c in claimed], *table.select_related)
        return claimed

    @staticmethod
    def _related(table: JobTable):
        """(foreign key, model, columns) when one foreign key's row is read in the claim's statement."""
        if len(table.select_related) != 1 or "__" in table.select_related[0] or not table.related_fields:
            return None
        field = table.model._meta.get_field(table.select_related[0])
        return field, field.related_model, list(table.related_fields)


def _json(value):
    if value == "{}":
        return {}  # most jobs' state columns: not worth the decoder
    return json.loads(value) if isinstance(value, str) else value


_json_positions: dict = {}


def _loaded(model, attnames: list[str], values) -> models.Model:
    """A model instance as the ORM would load it from a row, built without Model.__init__ (a claim builds
    thousands a second; __init__ walks every field). Fields not given are deferred, as with .only().
    psycopg2 hands jsonb over as text (Django decodes it in from_db_value, which is skipped here)."""
    key = (model, tuple(attnames))
    positions = _json_positions.get(key)
    if positions is None:
        fields = {f.attname: f for f in model._meta.concrete_fields}
        positions = _json_positions[key] = [i for i, name in enumerate(attnames)
                                            if isinstance(fields[name], models.JSONField)]
    values = list(values)
    for position in positions:
        values[position] = _json(values[position])
    obj = model.__new__(model)
    obj.__dict__.update(zip(attnames, values))
    obj._state = ModelState()
    obj._state.adding = False
    obj._state.db = connection.alias
    return obj


def engine() -> Engine:
    """The engine of the default database's family."""
    return _POSTGRES if connection.vendor == "postgresql" else _ORM


_POSTGRES, _ORM = PostgresEngine(), OrmEngine()

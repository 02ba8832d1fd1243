"""Set-based writes for the stages: one statement per batch, rendered cheaply, on PostgreSQL.

Django's bulk_update builds a CASE WHEN per row and field, and bulk_create prepares every value through the
field's full conversion chain; for the stages' batches that costs far more in Python than the database
spends on the statement. On PostgreSQL the rows go as one VALUES list rendered by psycopg2 instead (values
of the simple column types pass as they are; JSON is wrapped); elsewhere Django's own bulk methods run.
Statements still go through Django's cursor, so they are logged and counted like any other.
"""

from django.db import connection, models
from django.db.models import Model
from psycopg2.extras import Json


def _as_str(value):
    # TextChoices members are str subclasses the driver cannot adapt by type.
    return value if value is None or type(value) is str else str(value)


def _adapter(field):
    if isinstance(field, models.JSONField):
        return lambda value: None if value is None else Json(value)
    if isinstance(field, (models.CharField, models.TextField)):
        return _as_str
    return None


def _values_sql(cursor, template: str, rows: list[list]) -> str:
    raw = cursor.cursor
    return b",".join(raw.mogrify(template, row) for row in rows).decode("utf-8")


def _row_values(obj: Model, fields, adapters) -> list:
    values = []
    for field, adapt in zip(fields, adapters):
        value = getattr(obj, field.attname)
        values.append(adapt(value) if adapt is not None else value)
    return values


def bulk_update_rows(objs: list[Model], fields: list[str]) -> int:
    """Write `fields` of every object (matched by primary key) in one statement; return rows updated."""
    if not objs:
        return 0
    model = type(objs[0])
    if connection.vendor != "postgresql":
        return model._default_manager.bulk_update(objs, fields)
    meta = model._meta
    columns = [meta.pk] + [meta.get_field(name) for name in fields]
    adapters = [_adapter(field) for field in columns]
    template = "(" + ", ".join(f"%s::{field.db_type(connection)}" for field in columns) + ")"
    assignments = ", ".join(f'"{field.column}" = v."{field.column}"' for field in columns[1:])
    names = ", ".join(f'"{field.column}"' for field in columns)
    pk = meta.pk.column
    with connection.cursor() as cursor:
        values = _values_sql(cursor, template, [_row_values(obj, columns, adapters) for obj in objs])
        cursor.execute(f'UPDATE "{meta.db_table}" AS t SET {assignments} FROM (VALUES {values}) AS v({names}) '
                       f'WHERE t."{pk}" = v."{pk}"')
        return cursor.rowcount


def bulk_insert_rows(objs: list[Model], fields: list[str] | None = None, *, ignore_conflicts: bool = False) -> None:
    """Insert the objects in one statement (no primary keys come back); `fields` defaults to every column
    but the primary key, so set auto_now fields yourself. With `ignore_conflicts`, rows that would break a
    unique constraint are skipped (ON CONFLICT DO NOTHING)."""
    if not objs:
        return
    model = type(objs[0])
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create(objs, ignore_conflicts=ignore_conflicts)
        return
    meta = model._meta
    columns = ([meta.get_field(name) for name in fields] if fields is not None
               else [field for field in meta.concrete_fields if not field.primary_key])
    adapters = [_adapter(field) for field in columns]
    template = "(" + ", ".join(["%s"] * len(columns)) + ")"
    names = ", ".join(f'"{field.column}"' for field in columns)
    with connection.cursor() as cursor:
        values = _values_sql(cursor, template, [_row_values(obj, columns, adapters) for obj in objs])
        conflict = " ON CONFLICT DO NOTHING" if ignore_conflicts else ""
        cursor.execute(f'INSERT INTO "{meta.db_table}" ({names}) VALUES {values}{conflict}')

"""Set-based writes for the stages and the process stage: one statement per batch, one array per column.

Django's bulk_update builds a CASE WHEN per row and field, and bulk_create prepares every value through the
field's full conversion chain; for the stages' batches that costs far more in Python than the database
spends on the statement. On PostgreSQL every column goes as one array parameter instead and the statement
rebuilds the rows with `unnest(…)`: no per-row rendering in Python, and a statement text that does not
depend on the number of rows. Elsewhere (SQLite, one worker at a time) Django's own methods run.
Statements still go through Django's cursor, so they are logged and counted like any other.
"""

import datetime as dt
import json
from decimal import Decimal

from django.db import connection, models
from django.db.models import Model
from psycopg2.extras import Json


def _as_str(value):
    # TextChoices members are str subclasses the driver cannot adapt by type.
    return value if value is None or type(value) is str else str(value)


def _as_json(value):
    return None if value is None else Json(value)


def _adapter(field):
    if isinstance(field, models.JSONField):
        return _as_json
    if isinstance(field, (models.CharField, models.TextField)):
        return _as_str
    return None


def _adapted(field, value):
    adapt = _adapter(field)
    return value if adapt is None else adapt(value)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _element(value) -> str:
    """One element of a PostgreSQL array literal."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, (int, float, Decimal)):
        return str(value)
    return _quoted(value.isoformat() if isinstance(value, (dt.date, dt.time)) else str(value))


_INTEGER_TYPES = {"AutoField", "BigAutoField", "SmallAutoField", "IntegerField", "BigIntegerField",
                  "SmallIntegerField", "PositiveIntegerField", "PositiveBigIntegerField", "PositiveSmallIntegerField"}


def _array(field, values) -> str:
    """The values as one array literal (`{1,2,NULL}`, `{"a","b"}`): a single text parameter that the
    driver quotes once, instead of a list it would adapt element by element (several µs each)."""
    kind = (field.target_field if field.is_relation else field).get_internal_type()
    if isinstance(field, models.JSONField):
        elements = ["NULL" if v is None else _quoted(json.dumps(v, cls=field.encoder)) for v in values]
    elif kind in _INTEGER_TYPES:
        elements = ["NULL" if v is None else str(int(v)) for v in values]
    elif kind in ("CharField", "TextField", "EmailField", "SlugField", "URLField"):
        elements = ["NULL" if v is None else _quoted(str(v)) for v in values]
    else:
        elements = [_element(v) for v in values]
    return "{" + ",".join(elements) + "}"


def id_array(ids) -> str:
    """Integer ids as one array literal, for `= ANY(%s::bigint[])`."""
    return "{" + ",".join(str(int(i)) for i in sorted(ids)) + "}"


class _Rows:
    """`unnest(%s::type[], …) AS v(alias, …)`: the columns as arrays, one parameter each."""

    def __init__(self, model, columns: list[tuple[str, str, list]]):
        self.params = []
        casts, aliases = [], []
        for alias, name, values in columns:
            field = model._meta.get_field(name)
            casts.append(f"%s::{field.db_type(connection)}[]")
            aliases.append(f'"{alias}"')
            self.params.append(_array(field, values))
        self.sql = f"unnest({', '.join(casts)}) AS v({', '.join(aliases)})"


def _column(model, name: str) -> str:
    return f'"{model._meta.get_field(name).column}"'


def update_from_arrays(model, *, match: dict[str, list], values: dict[str, list] | None = None,
                       constants: dict | None = None, where: dict | None = None, returning: str | None = None):
    """Update one row per position of the arrays: the row whose `match` fields equal that position's values
    gets the `values` fields, and every such row gets the `constants`; rows whose `where` fields do not
    hold the given values are left alone (a fence: the caller learns which rows were written).

    Returns the number of rows updated, or with `returning` that field of every row updated.
    """
    values, constants, where = values or {}, constants or {}, where or {}
    if not next(iter(match.values())):
        return [] if returning else 0
    if connection.vendor != "postgresql":
        return _update_one_by_one(model, match, values, constants, where, returning)
    meta = model._meta
    # Matched fields are read from k_… columns, so that a field may be both matched and written.
    rows = _Rows(model, [(f"k_{name}", name, array) for name, array in match.items()]
                 + [(name, name, array) for name, array in values.items()])
    sets = [f'{_column(model, name)} = v."{name}"' for name in values]
    sets += [f"{_column(model, name)} = %s" for name in constants]
    conditions = [f't.{_column(model, name)} = v."k_{name}"' for name in match]
    # The first key again as `= ANY(array)`: an index condition on the table, so that PostgreSQL looks the
    # rows up instead of hashing the whole table to join it with a few hundred array rows.
    first = next(iter(match))
    first_field = meta.get_field(first)
    conditions.append(f"t.{_column(model, first)} = ANY(%s::{first_field.db_type(connection)}[])")
    conditions += [f"t.{_column(model, name)} = %s" for name in where]
    params = [_adapted(meta.get_field(name), value) for name, value in constants.items()]
    params += rows.params
    params.append(rows.params[0])
    params += [_adapted(meta.get_field(name), value) for name, value in where.items()]
    sql = (f'UPDATE "{meta.db_table}" AS t SET {", ".join(sets)} FROM {rows.sql} '
           f'WHERE {" AND ".join(conditions)}')
    with connection.cursor() as cursor:
        if returning:
            cursor.execute(f"{sql} RETURNING t.{_column(model, returning)}", params)
            return [row[0] for row in cursor.fetchall()]
        cursor.execute(sql, params)
        return cursor.rowcount


def _update_one_by_one(model, match, values, constants, where, returning):
    updated = []
    for position in range(len(next(iter(match.values())))):
        key = {name: array[position] for name, array in match.items()}
        fields = {**{name: array[position] for name, array in values.items()}, **constants}
        rows = model._default_manager.filter(**key, **where)
        if returning:
            found = list(rows.values_list(returning, flat=True))
            if found:
                model._default_manager.filter(**{f"{returning}__in": found}).update(**fields)
            updated += found
        else:
            updated.append(rows.update(**fields))
    return updated if returning else sum(updated)


def insert_from_arrays(model, columns: dict[str, list], *, constants: dict | None = None,
                       ignore_conflicts: bool = False) -> None:
    """Insert one row per position of the arrays (plus the `constants` on every row), in one statement.
    With `ignore_conflicts`, rows that would break a unique constraint are skipped."""
    constants = constants or {}
    if not next(iter(columns.values())):
        return
    if connection.vendor != "postgresql":
        count = len(next(iter(columns.values())))
        attnames = {name: model._meta.get_field(name).attname for name in [*columns, *constants]}
        objs = [model(**{attnames[name]: array[i] for name, array in columns.items()},
                      **{attnames[name]: value for name, value in constants.items()}) for i in range(count)]
        model._default_manager.bulk_create(objs, ignore_conflicts=ignore_conflicts)
        return
    meta = model._meta
    rows = _Rows(model, [(name, name, array) for name, array in columns.items()])
    names = [_column(model, name) for name in [*columns, *constants]]
    selected = [f'v."{name}"' for name in columns] + ["%s"] * len(constants)
    params = [_adapted(meta.get_field(name), value) for name, value in constants.items()]
    conflict = " ON CONFLICT DO NOTHING" if ignore_conflicts else ""
    with connection.cursor() as cursor:
        cursor.execute(f'INSERT INTO "{meta.db_table}" ({", ".join(names)}) '
                       f'SELECT {", ".join(selected)} FROM {rows.sql}{conflict}', params + rows.params)


def _columns_of(objs: list[Model], fields) -> dict[str, list]:
    return {field.name: [getattr(obj, field.attname) for obj in objs] for field in fields}


def bulk_update_rows(objs: list[Model], fields: list[str]) -> int:
    """Write `fields` of every object (matched by primary key) in one statement; return rows updated."""
    if not objs:
        return 0
    model = type(objs[0])
    if connection.vendor != "postgresql":
        return model._default_manager.bulk_update(objs, fields)
    meta = model._meta
    return update_from_arrays(model, match={meta.pk.name: [obj.pk for obj in objs]},
                              values=_columns_of(objs, [meta.get_field(name) for name in fields]))


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
    insert_from_arrays(model, _columns_of(objs, columns), ignore_conflicts=ignore_conflicts)

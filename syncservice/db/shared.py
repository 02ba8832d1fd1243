"""One PostgreSQL connection for all of a process's worker threads, shared under a lock.

The executor's lane threads call the targets; the database work they do on the way (the local backends'
rows, the outbound rate and concurrency slots) is a few short autocommitted statements per call. Each
thread still gets a Django connection object of its own (its own transaction state), but every one of them
runs its statements on the same DB-API connection: a worker holds one connection for its threads whatever
their number.

The lock is taken for each statement and, when a thread opens a transaction, until that transaction ends:
statements of the other threads wait instead of joining it. Transactions in these threads are meant to be
rare and short; the bulk writes of a stage run on the main thread's and the recorder's own connections.
"""

import atexit
import contextlib
import threading

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction


class SharedConnection:
    """The process's one shared DB-API connection of a database alias, and the lock that serializes it."""

    def __init__(self, alias: str = DEFAULT_DB_ALIAS):
        self.alias = alias
        self.lock = threading.RLock()
        self.raw = None
        self._classes: dict[type, type] = {}

    def wrapper(self):
        """A new Django connection object whose statements run on the shared connection."""
        wrapper = connections.create_connection(self.alias)
        base = type(wrapper)
        if base not in self._classes:
            self._classes[base] = type(f"Shared{base.__name__}", (_SharedWrapperMixin, base), {})
        wrapper.__class__ = self._classes[base]
        wrapper.shared = self
        wrapper.holds_shared_lock = False
        wrapper.execute_wrappers.append(wrapper.serialized_execute)
        wrapper.inc_thread_sharing()
        return wrapper

    def install(self) -> None:
        """Make the calling thread's connection of the alias one on the shared connection."""
        connections[self.alias] = self.wrapper()

    def uninstall(self) -> None:
        """Drop the calling thread's shared connection object (the shared connection stays open)."""
        try:
            current = connections[self.alias]
        except AttributeError:  # pragma: no cover - never installed
            return
        if isinstance(current, _SharedWrapperMixin):
            current.close()
            del connections[self.alias]

    def new_raw(self, wrapper, conn_params):
        with self.lock:
            if self.raw is None or self.raw.closed:
                raw = super(_SharedWrapperMixin, wrapper).get_new_connection(conn_params)
                # Autocommit before any other thread sees it: a statement in between would open a transaction
                # nobody ends.
                raw.autocommit = wrapper.settings_dict["AUTOCOMMIT"]
                self.raw = raw
            return self.raw

    def drop(self, raw) -> None:
        with self.lock:
            if self.raw is raw:
                self.raw = None
            if raw is not None and not raw.closed:
                raw.close()

    def close(self) -> None:
        """Close the shared connection (the next statement of any thread opens a new one)."""
        self.drop(self.raw)


class _SharedWrapperMixin:
    """Mixed into the database backend's DatabaseWrapper by SharedConnection.wrapper()."""

    shared: SharedConnection
    holds_shared_lock: bool

    def serialized_execute(self, execute, sql, params, many, context):
        with self.shared.lock:
            return execute(sql, params, many, context)

    def get_new_connection(self, conn_params):
        return self.shared.new_raw(self, conn_params)

    def is_usable(self):
        with self.shared.lock:  # its probe runs on the DB-API connection directly, past the execute wrappers
            return super().is_usable()

    def init_connection_state(self):
        with self.shared.lock:
            return super().init_connection_state()

    def _set_autocommit(self, autocommit):
        if not autocommit:
            # A transaction: the connection is this thread's until it commits or rolls back.
            self.shared.lock.acquire()
            try:
                super()._set_autocommit(False)
            except BaseException:
                self.shared.lock.release()
                raise
            self.holds_shared_lock = True
            return
        try:
            with self.shared.lock:  # waits for another thread's transaction to end
                super()._set_autocommit(True)
        finally:
            # Given up even when going back to autocommit failed (a connection lost mid-transaction): a hold
            # kept here would stop every other thread of the process for good.
            self._release_transaction_hold()

    def _release_transaction_hold(self):
        if self.holds_shared_lock:
            self.holds_shared_lock = False
            self.shared.lock.release()

    def _close(self):
        # The shared connection stays open for the other threads unless it is broken; a thread that closed
        # it inside its transaction gives the transaction's hold up here.
        raw = self.connection
        try:
            if raw is not None and (raw.closed or self.holds_shared_lock):
                if self.holds_shared_lock and not raw.closed:
                    raw.rollback()  # the transaction's statements die with it, as when a connection closes
                    raw.autocommit = True
                if raw.closed:
                    self.shared.drop(raw)
        finally:
            self._release_transaction_hold()


UNFLUSHED = "SET LOCAL synchronous_commit TO off"


def unflushed_prefix() -> str:
    """What makes one autocommitted query string a transaction whose commit does not wait for its WAL flush
    (the statements of one string run in one implicit transaction); nothing on SQLite."""
    return UNFLUSHED + "; " if connection.vendor == "postgresql" else ""


@contextlib.contextmanager
def unflushed_commit():
    """A short transaction whose commit does not wait for its WAL flush (`SET LOCAL synchronous_commit`).

    For writes a crash of PostgreSQL may lose without harm (the last fraction of a second of them; nothing is
    ever corrupted): the local backends' stand-in accounts. Their threads share one connection, where a
    flush per commit would serialize the threads on the disk.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(UNFLUSHED)
        yield


_shared: dict[str, SharedConnection] = {}
_shared_lock = threading.Lock()


def shared_connection(alias: str = DEFAULT_DB_ALIAS) -> SharedConnection:
    with _shared_lock:
        if alias not in _shared:
            _shared[alias] = SharedConnection(alias)
        return _shared[alias]


def close_shared_connections() -> None:
    for shared in list(_shared.values()):
        shared.close()


atexit.register(close_shared_connections)

"""Loopback stand-ins for the vendors' APIs (WeLink, Exmail, the HR source) and a fault-injecting proxy.

Each module has ``start(port=0, **options) -> (server, base_url)`` and ``stop(server)`` for tests, and runs
on its own as ``python -m syncservice.simulators.<name> --port P``. They use the standard library only.
"""

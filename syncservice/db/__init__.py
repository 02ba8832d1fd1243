"""Database plumbing below the services and the queue: set-based writes, row claims, locks, retried transactions."""

"""Delete finished requests (and their items) older than the retention period."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from taskmanagement.models import TaskRun
from taskmanagement.services import stage_run


class Command(BaseCommand):
    help = ("Delete finished requests (completed, partial_failed, failed, cancelled) and their items older than "
            "--older-than-days (default REQUEST_RETENTION_DAYS), in batches; never an unfinished request.")

    def add_arguments(self, parser):
        parser.add_argument("--older-than-days", type=int, default=None,
                            help="Age of the completion, in days (default: REQUEST_RETENTION_DAYS).")
        parser.add_argument("--dry-run", action="store_true", help="Report what would be deleted; delete nothing.")

    def handle(self, *args, older_than_days, dry_run, **options):
        days = settings.REQUEST_RETENTION_DAYS if older_than_days is None else older_than_days
        if days < 0:
            raise CommandError("--older-than-days must not be negative")
        try:
            run = stage_run(stage=TaskRun.Stage.PURGE_ACCOUNT_REQUESTS, trigger=TaskRun.Trigger.COMMAND,
                            dry_run=dry_run, older_than_days=days)
        except DatabaseError as exc:
            raise CommandError(f"purge_account_requests failed: database error: {exc}") from exc
        prefix = "[dry run] " if dry_run else ""
        self.stdout.write(f"{prefix}purge_account_requests: {run.summary}")

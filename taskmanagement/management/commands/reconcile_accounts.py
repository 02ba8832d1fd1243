"""Compare our records with the targets' accounts; optionally repair what drifted, through the queue."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from taskmanagement.models import TaskRun
from taskmanagement.services import stage_run
from taskmanagement.stage_command import one_line


class Command(BaseCommand):
    help = ("Read every target's accounts and compare them with ours: missing, orphan, drift, duplicate. "
            "--repair opens queue work for missing, drifted and wrongly active accounts (never for orphans or "
            "duplicates), held back when more than RECONCILE_MAX_REPAIRS accounts of a system would change "
            "unless --force.")

    def add_arguments(self, parser):
        parser.add_argument("--system", action="append", dest="systems", choices=settings.PROVISIONING_SYSTEMS,
                            help="Only this system (repeatable; default: every system).")
        parser.add_argument("--repair", action="store_true", help="Open repairs for what was found.")
        parser.add_argument("--dry-run", action="store_true", help="Compare and report only; repair nothing.")
        parser.add_argument("--force", action="store_true", help="Repair even past RECONCILE_MAX_REPAIRS.")

    def handle(self, *args, systems, repair, dry_run, force, **options):
        try:
            run = stage_run(stage=TaskRun.Stage.RECONCILE_ACCOUNTS, trigger=TaskRun.Trigger.COMMAND,
                            dry_run=dry_run, systems=systems, repair=repair, force=force)
        except DatabaseError as exc:
            raise CommandError(f"reconcile_accounts failed: database error: {one_line(exc)}") from exc
        except Exception as exc:
            raise CommandError(f"reconcile_accounts failed: {one_line(exc)}") from exc
        prefix = "[dry run] " if dry_run else ""
        self.stdout.write(f"{prefix}reconcile_accounts: {run.summary}")

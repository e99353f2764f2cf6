"""`python manage.py seed_demo`: the demo users and project (idempotent; run it as often as you like)."""
from django.core.management.base import BaseCommand

from lab.demo import demo_seed


class Command(BaseCommand):
    help = "Create (or refresh) the demo users and the 'demo' project with its prompts and tiny base models."

    def handle(self, *args, **options) -> None:
        summary = demo_seed()
        state = "already there" if summary["already_imported"] else "imported"
        self.stdout.write(
            f"Project '{summary['project']}': round {summary['round']}, {summary['prompts']} prompts, "
            f"{summary['samples']} responses ({state})."
        )
        state = "built" if summary["base_models_built"] else "already there"
        models = ", ".join(f"{name} (artifact {pk})" for name, pk in summary["base_models"])
        self.stdout.write(f"Base models: {models} ({state}).")
        self.stdout.write("Logins (username / password):")
        for username, password in summary["logins"]:
            self.stdout.write(f"  {username} / {password}")

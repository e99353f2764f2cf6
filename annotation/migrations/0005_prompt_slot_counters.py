"""Denormalised lease counters on Prompt (see annotation.services.prompt_slots_refresh), filled from the
existing leases so that a database migrated with leases in flight serves the same prompts as before."""
from django.db import migrations, models
from django.db.models import Count, IntegerField, Min, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce

HOLDING = ["submitted", "active"]


def fill_counters(apps, schema_editor):
    Prompt = apps.get_model("annotation", "Prompt")
    Assignment = apps.get_model("annotation", "Assignment")
    taken = (Assignment.objects.filter(prompt=OuterRef("pk"), status__in=HOLDING).order_by().values("prompt")
             .annotate(n=Count("pk")).values("n"))
    first_expiry = (Assignment.objects.filter(prompt=OuterRef("pk"), status="active").order_by().values("prompt")
                    .annotate(t=Min("expires_at")).values("t"))
    Prompt.objects.filter(pk__in=Assignment.objects.filter(status__in=HOLDING).values("prompt")).update(
        slots_taken=Coalesce(Subquery(taken, output_field=IntegerField()), Value(0)),
        lease_expires_min=Subquery(first_expiry),
    )


class Migration(migrations.Migration):

    dependencies = [
        ("annotation", "0004_arena"),
    ]

    operations = [
        migrations.AddField(
            model_name="prompt",
            name="slots_taken",
            field=models.PositiveSmallIntegerField(
                default=0, editable=False,
                help_text="Submitted and active leases (active ones past expiry too, until reclaimed).",
            ),
        ),
        migrations.AddField(
            model_name="prompt",
            name="lease_expires_min",
            field=models.DateTimeField(
                blank=True, editable=False, help_text="Earliest expiry among the prompt's active leases.", null=True
            ),
        ),
        migrations.RunPython(fill_counters, migrations.RunPython.noop),
    ]

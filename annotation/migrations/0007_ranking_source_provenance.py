"""Ranking.source gains "arena" and "gold" and an index; existing rows are backfilled from what is known:
rankings of AI labeler users → "ai", rankings behind an arena vote → "arena", a human or simulated labeler's
ranking of a prompt that is gold today → "gold". Imported rankings already say "imported".

AI labelers no longer take human overlap slots: prompts they hold leases on get ``slots_taken`` and
``lease_expires_min`` recounted from the humans' leases only (as ``annotation.services.prompt_slots_refresh``)."""
from django.db import migrations, models
from django.db.models import Count, IntegerField, Min, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce


def backfill_sources(apps, schema_editor):
    Ranking = apps.get_model("annotation", "Ranking")
    AILabeler = apps.get_model("annotation", "AILabeler")
    ArenaVote = apps.get_model("annotation", "ArenaVote")
    Ranking.objects.filter(pk__in=ArenaVote.objects.values("ranking_id")).update(source="arena")
    Ranking.objects.filter(labeler_id__in=AILabeler.objects.values("user_id")).exclude(source="arena").update(
        source="ai")
    Ranking.objects.filter(prompt__is_gold=True, source__in=["human", "simulated"]).update(source="gold")
    _recount_human_slots(apps)


def _recount_human_slots(apps):
    Prompt = apps.get_model("annotation", "Prompt")
    Assignment = apps.get_model("annotation", "Assignment")
    AILabeler = apps.get_model("annotation", "AILabeler")
    ai_users = AILabeler.objects.values("user_id")
    human = Assignment.objects.filter(prompt=OuterRef("pk")).exclude(labeler_id__in=ai_users)
    taken = (human.filter(status__in=["submitted", "active"]).order_by().values("prompt")
             .annotate(n=Count("pk")).values("n"))
    first_expiry = human.filter(status="active").order_by().values("prompt").annotate(t=Min("expires_at")).values("t")
    Prompt.objects.filter(pk__in=Assignment.objects.filter(labeler_id__in=ai_users).values("prompt")).update(
        slots_taken=Coalesce(Subquery(taken, output_field=IntegerField()), Value(0)),
        lease_expires_min=Subquery(first_expiry),
    )


def restore_sources(apps, schema_editor):
    Ranking = apps.get_model("annotation", "Ranking")
    AILabeler = apps.get_model("annotation", "AILabeler")
    arena = Ranking.objects.filter(source="arena")
    arena.filter(labeler_id__in=AILabeler.objects.values("user_id")).update(source="ai")
    arena.update(source="human")
    Ranking.objects.filter(source="gold").update(source="human")


class Migration(migrations.Migration):

    dependencies = [
        ("annotation", "0006_ranking_comment_all_bad"),
    ]

    operations = [
        migrations.AlterField(
            model_name="ranking",
            name="source",
            field=models.CharField(
                choices=[("human", "Human"), ("simulated", "Simulated labeler"), ("imported", "Imported"),
                         ("ai", "AI labeler"), ("arena", "Arena vote"),
                         ("gold", "Gold prompt (labeler's ranking of a gold prompt)")],
                db_index=True, default="human", max_length=16,
            ),
        ),
        migrations.RunPython(backfill_sources, restore_sources),
    ]

"""The lease index (see annotation.selectors._lease_window_sql): each slot level of a round in id order, so a
fetch reads a few index entries however many prompts are full; and the prompts with active leases by expiry.

PostgreSQL refuses CREATE INDEX on a table with pending trigger events, which annotation_prompt has in a
transaction that just inserted prompts (Django's foreign keys are DEFERRABLE INITIALLY DEFERRED): those
foreign-key checks are run now instead (SET CONSTRAINTS … IMMEDIATE, this transaction only). On a large table
CREATE INDEX blocks writes to annotation_prompt while it builds (measured in docs/scaling.md: 1M prompts).
"""
from django.db import migrations, models


def _constraints_immediate(apps, schema_editor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT quote_ident(conname) FROM pg_constraint WHERE conrelid = 'annotation_prompt'::regclass "
                       "AND contype = 'f' AND condeferrable")
        names = [row[0] for row in cursor.fetchall()]
    if names:
        schema_editor.execute(f"SET CONSTRAINTS {', '.join(names)} IMMEDIATE", params=None)


class Migration(migrations.Migration):

    dependencies = [
        ("annotation", "0009_move_arena_to_lab"),
    ]

    operations = [
        migrations.RunPython(_constraints_immediate, _constraints_immediate),
        migrations.AddIndex(
            model_name="prompt",
            index=models.Index(fields=["round", "is_gold", "slots_taken", "id"], name="prompt_lease_idx"),
        ),
        migrations.AddIndex(
            model_name="prompt",
            index=models.Index(condition=models.Q(("lease_expires_min__isnull", False)), fields=["lease_expires_min"],
                               name="prompt_lease_expiry_idx"),
        ),
    ]

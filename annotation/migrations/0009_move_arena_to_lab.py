"""Arena, ArenaPair and ArenaVote now belong to the lab app (lab/models.py).

State only: the tables stay as they are (lab's models keep ``db_table = "annotation_arena"`` and so on) and
lab's 0001 adds the models back to Django's state under its own label, so no row moves."""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('annotation', '0008_ai_labeler_kind_registered_hook'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name='ArenaVote'),
                migrations.DeleteModel(name='ArenaPair'),
                migrations.DeleteModel(name='Arena'),
            ],
            database_operations=[],
        ),
    ]

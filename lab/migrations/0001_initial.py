"""The arena models, moved from annotation (its 0004 created the tables, its 0009 let go of them).

State only for the tables: the models are created in Django's state with the tables they already have
(``annotation_arena``, ``annotation_arenapair``, ``annotation_arenavote``), constraints and all, so every
arena, pair and vote stays where it is. The one database change relabels the three content types from
``annotation`` to ``lab``, so permissions granted on them and admin log entries follow the models."""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MOVED = ['arena', 'arenapair', 'arenavote']


def _relabel(apps, source: str, target: str) -> None:
    ContentType = apps.get_model('contenttypes', 'ContentType')
    taken = set(ContentType.objects.filter(app_label=target, model__in=MOVED).values_list('model', flat=True))
    ContentType.objects.filter(app_label=source, model__in=set(MOVED) - taken).update(app_label=target)


def content_types_to_lab(apps, schema_editor) -> None:
    _relabel(apps, 'annotation', 'lab')


def content_types_to_annotation(apps, schema_editor) -> None:
    _relabel(apps, 'lab', 'annotation')


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('annotation', '0009_move_arena_to_lab'),
        ('contenttypes', '0002_remove_content_type_name'),
        ('training', '0001_initial'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='Arena',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(help_text="Shown to researchers only (voters see 'Arena #id').", max_length=200)),
                        ('status', models.CharField(choices=[('generating', 'Waiting for responses'), ('open', 'Open for votes'), ('closed', 'Closed')], default='generating', max_length=16)),
                        ('sampling_params', models.JSONField(blank=True, default=dict)),
                        ('summary', models.JSONField(blank=True, default=dict, help_text='Prompts written, dropped (identical responses).')),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('model_a', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='training.modelartifact')),
                        ('model_b', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='training.modelartifact')),
                        ('project', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='arenas', to='annotation.project')),
                        ('round', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='arena', to='annotation.round')),
                    ],
                    options={
                        'db_table': 'annotation_arena',
                        'ordering': ['-created_at', '-id'],
                        'constraints': [models.CheckConstraint(condition=models.Q(('model_a', models.F('model_b')), _negated=True), name='arena_two_models')],
                    },
                ),
                migrations.CreateModel(
                    name='ArenaPair',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('arena', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='pairs', to='lab.arena')),
                        ('prompt', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='arena_pair', to='annotation.prompt')),
                        ('sample_a', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='annotation.sample')),
                        ('sample_b', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='annotation.sample')),
                    ],
                    options={
                        'db_table': 'annotation_arenapair',
                        'ordering': ['id'],
                        'constraints': [models.CheckConstraint(condition=models.Q(('sample_a', models.F('sample_b')), _negated=True), name='arena_pair_two_samples')],
                    },
                ),
                migrations.CreateModel(
                    name='ArenaVote',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('outcome', models.CharField(choices=[('a', 'Model A better'), ('b', 'Model B better'), ('tie', 'Tie'), ('both_bad', 'Both bad')], max_length=16)),
                        ('time_spent_ms', models.PositiveIntegerField(default=0)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('left_sample', models.ForeignKey(help_text='The response shown on the left (order drawn per voter and pair).', on_delete=django.db.models.deletion.CASCADE, related_name='+', to='annotation.sample')),
                        ('pair', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='votes', to='lab.arenapair')),
                        ('ranking', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='arena_vote', to='annotation.ranking')),
                        ('voter', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'db_table': 'annotation_arenavote',
                        'ordering': ['id'],
                        'constraints': [models.UniqueConstraint(fields=('pair', 'voter'), name='arena_vote_once_per_voter')],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_to_lab, content_types_to_annotation),
    ]

from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from annotation.extensions import ranking_lock_register
        from training.selectors import ranking_lock_by_snapshot

        ranking_lock_register(ranking_lock_by_snapshot)

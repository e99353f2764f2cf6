from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from annotation.hooks import builtin_register

        # The demo task's scorer (training/ml/demo_task.py), by name, for labelers and PPO/GRPO rewards.
        builtin_register(kind="utility", name="demo", target="training.ml.demo_task:demo_utility")
        builtin_register(kind="reward_fn", name="demo", target="training.ml.demo_task:demo_utility")

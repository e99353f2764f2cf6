from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from annotation.extensions import ranking_lock_register
        from annotation.hooks import builtin_register
        from training.selectors import ranking_lock_by_snapshot
        from training.services import run_enqueuer_register
        from training.tasks import run_enqueue

        ranking_lock_register(ranking_lock_by_snapshot)
        run_enqueuer_register(run_enqueue)  # services send runs to workers without importing the tasks
        # The demo task's scorer (training/ml/demo_task.py), by name, for labelers and PPO/GRPO rewards.
        builtin_register(kind="utility", name="demo", target="training.ml.demo_task:demo_utility")
        builtin_register(kind="reward_fn", name="demo", target="training.ml.demo_task:demo_utility")
        # The demo task's grammar check, a policy health check (training/health.py).
        builtin_register(kind="task_check", name="demo_grammar", target="training.ml.demo_task:demo_grammar_check")

from django.apps import AppConfig


class LabConfig(AppConfig):
    """The features that use trained models, above annotation and training: arena, AI labelers, active
    selection and the demo builder."""

    name = "lab"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from annotation.extensions import ModelServices, model_services_register
        from lab.active.services import round_select
        from lab.ai_labelers.selectors import reward_models_of_project
        from lab.ai_labelers.services import ai_labeler_create, ai_labeler_run
        from lab.services import arena_generation_enqueuer_register
        from lab.tasks import arena_generation_enqueue

        model_services_register(ModelServices(round_select=round_select, ai_labeler_create=ai_labeler_create,
                                              ai_labeler_run=ai_labeler_run, reward_models=reward_models_of_project))
        arena_generation_enqueuer_register(arena_generation_enqueue)  # lab.services does not import the tasks

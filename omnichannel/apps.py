from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class OmnichannelConfig(AppConfig):
    name = "omnichannel"
    label = "omnichannel"
    verbose_name = _("Omnichannel marketing")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from .schedules import ensure_schedules_after_migrate

        post_migrate.connect(
            ensure_schedules_after_migrate, sender=self, dispatch_uid="omnichannel.schedules"
        )
        from . import checks  # noqa: F401  (registers system checks)
        from .campaigns import receivers as campaign_receivers  # noqa: F401  (triggers, enrolling)
        from .profiles import receivers  # noqa: F401  (connects Oscar signal receivers)
        from .segments import receivers as segment_receivers  # noqa: F401  (purchased products)
        from .tracking import receivers as tracking_receivers  # noqa: F401  (anymail tracking)

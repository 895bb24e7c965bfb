from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class OmnichannelConfig(AppConfig):
    name = "omnichannel"
    label = "omnichannel"
    verbose_name = _("Omnichannel marketing")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers system checks)
        from .profiles import receivers  # noqa: F401  (connects Oscar signal receivers)
        from .segments import receivers as segment_receivers  # noqa: F401  (purchased products)
        from .tracking import receivers as tracking_receivers  # noqa: F401  (anymail tracking)

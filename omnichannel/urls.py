"""URLs of the app: include them in the shop's urls.py under any prefix::

    path("omnichannel/", include("omnichannel.urls")),

and anymail's webhooks beside them (see docs/channels.md)::

    path("anymail/", include("anymail.urls")),
"""

from django.urls import path

from .tracking import views, webhooks

app_name = "omnichannel"

urlpatterns = [
    path("c/<str:token>/", views.click, name="click"),
    path("s/<str:token>/", views.short_click, name="short-click"),
    path("o/<str:token>/pixel.gif", views.open_pixel, name="open"),
    path("unsubscribe/<str:token>/", views.unsubscribe, name="unsubscribe"),
    path("preferences/<str:token>/", views.preferences, name="preferences"),
    path("basket/<str:token>/", views.basket_restore, name="basket-restore"),
    path("webhooks/telegram/", webhooks.telegram_update, name="telegram-webhook"),
    path("webhooks/sms/<str:channel>/", webhooks.sms_status, name="sms-status"),
]

"""A shop that forgot to include omnichannel.urls (for the system check test)."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]

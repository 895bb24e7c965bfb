"""Settings, system checks and the beat schedule command."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from omnichannel.conf import app_settings
from omnichannel.tasks import FOLD_EVENTS_TASK


def check_ids() -> set[str]:
    return {message.id for message in run_checks()}


def test_settings_are_read_lazily_and_follow_overrides(settings):
    settings.OMNICHANNEL = {"EVENT_BATCH_SIZE": 7}
    assert app_settings.EVENT_BATCH_SIZE == 7
    settings.OMNICHANNEL = {}
    assert app_settings.EVENT_BATCH_SIZE == 1000
    with pytest.raises(AttributeError, match="Unknown omnichannel setting"):
        app_settings.NO_SUCH_THING  # noqa: B018


def test_system_checks_name_bad_settings(settings):
    assert not {"omnichannel.E001", "omnichannel.E002", "omnichannel.W001"} & check_ids()
    settings.OMNICHANNEL = {"DEFAULT_PHONE_REGION": "XX", "TYPO_SETTING": 1}
    assert {"omnichannel.E001", "omnichannel.E002"} <= check_ids()
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "omnichannel" not in m]
    assert "omnichannel.W001" in check_ids()


def test_system_checks_name_a_broken_channel_and_missing_urls(settings):
    assert not {"omnichannel.E004", "omnichannel.W002"} & check_ids()
    settings.OMNICHANNEL = {"CHANNELS": {"fax": {"BACKEND": "no.such.FaxChannel"}}}
    assert "omnichannel.E004" in check_ids()
    settings.OMNICHANNEL = {}
    settings.ROOT_URLCONF = "tests.urls_without_omnichannel"
    assert "omnichannel.W002" in check_ids()


@pytest.mark.django_db
def test_setup_schedules_creates_and_updates_only_its_own_rows(settings):
    every_minute = IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="someone else's", task="other.task", interval=every_minute)
    out = StringIO()
    call_command("omnichannel_setup_schedules", stdout=out)
    task = PeriodicTask.objects.get(task=FOLD_EVENTS_TASK)
    assert task.interval.every == app_settings.EVENT_FOLD_INTERVAL
    assert set(PeriodicTask.objects.values_list("task", flat=True)) == {
        "other.task",
        FOLD_EVENTS_TASK,
        "omnichannel.channels.deliver_due",
        "omnichannel.campaigns.tick",
        "omnichannel.segments.refresh_rfm",
        "omnichannel.analytics.attribute_orders",
    }
    settings.OMNICHANNEL = {"EVENT_FOLD_INTERVAL": 30}
    call_command("omnichannel_setup_schedules", stdout=out)
    assert PeriodicTask.objects.get(task=FOLD_EVENTS_TASK).interval.every == 30
    assert PeriodicTask.objects.filter(name="someone else's").exists()
    assert "updated" in out.getvalue()


@pytest.mark.django_db
def test_migrate_creates_the_schedules_and_running_it_again_changes_nothing():
    from omnichannel.schedules import ensure_schedules_after_migrate

    # The test database was migrated: the rows are there already.
    tasks = set(PeriodicTask.objects.values_list("task", flat=True))
    assert {FOLD_EVENTS_TASK, "omnichannel.campaigns.tick"} <= tasks
    before = PeriodicTask.objects.count(), IntervalSchedule.objects.count()
    ensure_schedules_after_migrate(using="default")
    assert (PeriodicTask.objects.count(), IntervalSchedule.objects.count()) == before


@pytest.mark.django_db
def test_setup_schedules_repairs_a_task_someone_moved_to_a_crontab():
    from django_celery_beat.models import CrontabSchedule

    call_command("omnichannel_setup_schedules", stdout=StringIO())
    IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS)  # a duplicate
    task = PeriodicTask.objects.get(task=FOLD_EVENTS_TASK)
    PeriodicTask.objects.filter(pk=task.pk).update(
        interval=None, crontab=CrontabSchedule.objects.create(minute="*/5")
    )
    call_command("omnichannel_setup_schedules", stdout=StringIO())
    task.refresh_from_db()
    assert task.interval is not None and task.crontab is None


def test_every_setting_is_documented():
    from pathlib import Path

    from omnichannel.conf import DEFAULTS

    text = (Path(__file__).resolve().parent.parent / "docs" / "settings.md").read_text()
    assert [key for key in DEFAULTS if f"`{key}`" not in text] == []

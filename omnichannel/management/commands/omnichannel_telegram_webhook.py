"""Point the Telegram bot's webhook at this shop (setWebhook with our secret token)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.urls import reverse

from ...channels.registry import get_channel
from ...channels.telegram import TelegramChannel
from ...conf import app_settings
from ...exceptions import ChannelError, ConfigurationError
from ...tracking import links

#: The updates our webhook acts on; Telegram sends no others.
ALLOWED_UPDATES = ["message", "my_chat_member"]


class Command(BaseCommand):
    help = (
        "Register this shop's Telegram webhook with the Bot API (setWebhook), with the channel's "
        "WEBHOOK_SECRET as secret token. Telegram only calls HTTPS URLs."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--channel", help="Name of the Telegram channel (default: the first configured)."
        )
        parser.add_argument("--url", help="Webhook URL to register (default: built from SITE_URL).")
        parser.add_argument(
            "--drop-pending-updates",
            action="store_true",
            help="Discard the updates Telegram holds for the bot.",
        )
        parser.add_argument(
            "--delete", action="store_true", help="Remove the webhook instead (deleteWebhook)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        channel = self.find_channel(options.get("channel"))
        if not channel.bot_token:
            raise CommandError(f"channel {channel.name!r} has no BOT_TOKEN")
        try:
            if options["delete"]:
                channel.call(
                    "deleteWebhook", {"drop_pending_updates": options["drop_pending_updates"]}
                )
                self.stdout.write(self.style.SUCCESS(f"{channel.name}: webhook removed"))
                return
            if not channel.webhook_secret:
                raise CommandError(
                    f"set WEBHOOK_SECRET in OMNICHANNEL['CHANNELS'][{channel.name!r}]['OPTIONS'] "
                    "first: the webhook refuses updates without it"
                )
            url = options.get("url") or webhook_url(channel)
            channel.call(
                "setWebhook",
                {
                    "url": url,
                    "secret_token": channel.webhook_secret,
                    "allowed_updates": ALLOWED_UPDATES,
                    "drop_pending_updates": options["drop_pending_updates"],
                },
            )
        except ChannelError as exc:
            raise CommandError(exc.reason) from None
        self.stdout.write(self.style.SUCCESS(f"{channel.name}: webhook set to {url}"))

    def find_channel(self, name: str | None) -> TelegramChannel:
        if name:
            try:
                channel = get_channel(name)
            except ConfigurationError as exc:
                raise CommandError(str(exc)) from exc
            if not isinstance(channel, TelegramChannel):
                raise CommandError(f"channel {name!r} is not a TelegramChannel")
            return channel
        errors = []
        for configured in app_settings.CHANNELS:
            try:
                channel = get_channel(configured)
            except ConfigurationError as exc:
                errors.append(str(exc))
                continue
            if isinstance(channel, TelegramChannel):
                return channel
        raise CommandError(
            "no TelegramChannel in OMNICHANNEL['CHANNELS']"
            + "".join(f"\n  (skipped: {error})" for error in errors)
        )


def webhook_url(channel: TelegramChannel) -> str:
    """Our webhook's absolute URL, naming the channel (several bots can share one shop)."""
    path = reverse("omnichannel:telegram-webhook")
    return links.absolute(path) + "?" + urlencode({"channel": channel.name})

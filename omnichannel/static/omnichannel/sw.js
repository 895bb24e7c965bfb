/*
 * Service worker for django-oscar-omnichannel web push (omnichannel.channels.push.WebPushChannel).
 *
 * A service worker only controls pages under its own path: serve this file at the root of the
 * shop (e.g. /sw.js, see docs/channels.md "Push") or send "Service-Worker-Allowed: /" with it,
 * then register it from the shop's pages: navigator.serviceWorker.register("/sw.js").
 * The push payload is the JSON the channel sends:
 *   {"title", "body", "url", "image", "icon", "badge", "message_id"} (all but title optional).
 * "url" is already our signed click redirect: opening it records the click.
 */
"use strict";

self.addEventListener("install", function () {
  self.skipWaiting();
});

self.addEventListener("activate", function (event) {
  event.waitUntil(self.clients.claim());
});

self.addEventListener("push", function (event) {
  var data = {};
  if (event.data) {
    try {
      data = event.data.json();
    } catch (error) {
      data = { body: event.data.text() };
    }
  }
  var options = {
    body: data.body || "",
    data: { url: data.url || "/" },
    // One notification per message: a resent message replaces itself instead of stacking.
    tag: data.message_id || undefined,
  };
  if (data.icon) {
    options.icon = data.icon;
  }
  if (data.badge) {
    options.badge = data.badge;
  }
  if (data.image) {
    options.image = data.image;
  }
  event.waitUntil(self.registration.showNotification(data.title || "", options));
});

self.addEventListener("notificationclick", function (event) {
  event.notification.close();
  var url = (event.notification.data && event.notification.data.url) || "/";
  // The URL is our click redirect, never the page itself: always open it, so the click counts.
  event.waitUntil(self.clients.openWindow(url));
});

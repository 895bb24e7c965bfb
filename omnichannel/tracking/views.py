"""Views behind the links in messages. (Being written: see issue #3.)"""

from django.http import HttpRequest, HttpResponse


def _not_yet(request: HttpRequest, token: str) -> HttpResponse:
    return HttpResponse(status=501)


click = open_pixel = unsubscribe = preferences = basket_restore = _not_yet

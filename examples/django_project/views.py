"""Four views: nothing here knows about posthog_identity (not even the login view)."""

from __future__ import annotations

import posthog
from django.contrib.auth import login, logout
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html")


@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    """Any user name logs in (the user is created on the fly): an example, not auth."""
    username = request.POST.get("username", "").strip()
    if request.method == "POST" and username:
        user, _ = User.objects.get_or_create(username=username)
        login(request, user)
        # Right after login(): already the user's event, nothing to call first.
        posthog.capture("Logged In")
        return redirect("home")
    return render(request, "login.html")


def page(request: HttpRequest) -> HttpResponse:
    # No distinct_id: the request's identity (the user's pk once logged in).
    posthog.capture("Page Viewed", properties={"path": request.path})
    return render(request, "page.html")


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    # Right after logout(): no longer the user's event.
    posthog.capture("Logged Out")
    return redirect("home")

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.login_view, name="login"),
    path("page/", views.page, name="page"),
    path("logout/", views.logout_view, name="logout"),
]

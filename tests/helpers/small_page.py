"""A small HTML page with a head, as the apps of the injection tests answer it, and the
content type they answer it with."""

from __future__ import annotations

PAGE = b"<!doctype html><html><head><title>t</title></head><body><h1>hi</h1></body></html>"
HTML = "text/html; charset=utf-8"

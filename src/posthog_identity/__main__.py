"""`python -m posthog_identity`: the same commands as `posthog-identity`."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())

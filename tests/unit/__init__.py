"""One test module per source module (`src/posthog_identity/X.py` -> `tests/unit/test_X.py`)."""

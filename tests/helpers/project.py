"""The test project's fixed values: the repository root, the API key and the secret.

Every helper and test that configures the middleware, a server or a sink uses
these, so a cookie minted by one can be read by another.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECRET = "test-secret-0123456789abcdef0123456789"
API_KEY = "phc_test_project_key"

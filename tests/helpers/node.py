"""Our snippet's JavaScript run in Node, against a harness standing in for the browser.

`run_in_node(harness, snippet, argument)` runs the code of the script element `snippet`
under `harness` (a Node script: the code is `process.argv[1]`, `argument` as JSON is
`process.argv[2]`) and returns the one JSON object the harness prints. `needs_node`
skips a test where Node is not installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")


def run_in_node(harness: str, snippet: bytes, argument: Any) -> dict[str, Any]:
    assert NODE is not None
    match = re.fullmatch(rb"<script[^>]*>(.*)</script>", snippet, re.DOTALL)
    assert match is not None
    result = subprocess.run(
        [NODE, "-e", harness, match.group(1).decode(), json.dumps(argument)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]

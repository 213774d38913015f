"""The repository keeps its promises: docs that match the code, tests that mirror it."""

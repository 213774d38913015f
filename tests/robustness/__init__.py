"""Hostile input (fuzzing), load (concurrency) and a failing PostHog."""

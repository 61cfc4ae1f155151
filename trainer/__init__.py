"""Switchboard trainer (built in a later issue)."""

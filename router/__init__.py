"""Switchboard router (built in a later issue)."""

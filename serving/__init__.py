"""Switchboard serving (built in a later issue)."""

"""Scenes (REFERENCE.md §3.9, §4.12, S9): named lists of rule-style actions that a user or an
application sends together on demand ("activation"), without conditions and without state."""

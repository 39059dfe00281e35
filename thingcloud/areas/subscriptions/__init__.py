"""Subscriptions and notifications (REFERENCE.md §3.10, §3.11, §4.10, §5.6): webhook and Kinesis
pushes of an application's users' messages and actions."""

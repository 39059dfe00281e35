"""Device management (issue #10): properties, per-device-type configuration, manifest and tasks.

Properties, configuration and manifest live in ``config``, ``manifest``, ``properties``, ``routes``
and ``schemas``; tasks, their delivery and OTA updates live in the ``task_*`` and ``ota`` modules.
"""

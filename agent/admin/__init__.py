"""The admin commands of ``mini-connector`` other than ``run``: ``diagnose`` (network
checks, support bundle), ``logs``, ``service`` (systemd / Windows service) and the
security commands, with their exit codes (``errors``)."""

"""Subcommands of the ``hybrid-node`` command that are not experiments (``doctor``)."""

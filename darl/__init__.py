"""The ``darl`` command: one CLI over the service and the training package."""

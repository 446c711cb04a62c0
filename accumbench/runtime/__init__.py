"""The runtime: one run end to end (engine), the gradient check (check_ga), classifying new text with a
checkpoint or an export (inference); under them a run's lifecycle (RUNNING -> a terminal status, heartbeat,
signals), where checkpoints go, loading and validating everything a run needs (preparation), and, lowest,
the micro-batch search. Torch is imported here, never on the way to `accumbench --help`."""

"""The sweeper's own error: a `hydra.sweeper` setting or a job's link to its trial that cannot be used."""


class SweepConfigError(ValueError):
    """Bad sweep input; the message names the key, the value and what was expected."""

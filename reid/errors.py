"""Errors a user can act on: each message names the key, file or value and what was expected."""


class ReidError(Exception):
    """Base class for errors caused by the user's configuration or data, not by a bug."""


class ConfigError(ReidError, ValueError):
    """A config value has the wrong type or an invalid value."""


class PretrainedWeightsUnavailable(ReidError, RuntimeError):
    """`backbone.pretrained=true` could not fetch the library's weights (no network, no cache)."""


class CheckpointError(ReidError, RuntimeError):
    """A checkpoint or weight file is unreadable, unsafe or belongs to another model."""


class DatasetError(ReidError, ValueError):
    """A dataset root, layout or image is unusable.

    Raised instead of a bare ``OSError``/``KeyError`` so that the message can name the offending path and say
    what was expected there.
    """


class ExportError(ReidError, RuntimeError):
    """A trained model could not be written in the asked deployment format (`reid.export`)."""

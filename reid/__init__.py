"""reid: Hydra-composed training, exact evaluation and sweeps for re-identification models."""

__version__ = "0.1.0"

"""duet: device-cloud collaborative parameter generation (DUET, WWW 2023)."""

__version__ = "0.1.0"

"""npva: Neural Point-based Volumetric Avatars."""

__version__ = "0.1.0"

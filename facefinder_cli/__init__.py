"""facefinder: recover a face hidden at unknown positions in many noisy images."""
__version__ = "0.1.0"

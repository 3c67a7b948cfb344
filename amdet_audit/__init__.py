"""amdet-audit: pre-deployment backdoor audit of vision-language text encoders."""

__version__ = "0.1.0"

"""amdet-audit plugin: render a scanned encoder's target feature into images with a Stable Diffusion pipeline."""

__version__ = "0.1.0"

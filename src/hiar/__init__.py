"""hiar: autoregressive long-video diffusion with hierarchical denoising.

Layers (each depends only on the ones above it): ``schedule`` -> ``model`` -> ``grid`` (the
grid's pure bookkeeping) -> ``sampling`` -> ``training`` -> ``eval`` -> ``cli``. Latent codecs and
text encoders are plug-ins (``hiar.world`` for the shapes world, ``hiar.wan`` for Wan2.1's VAE and
umT5); ``hiar.conditioning`` turns given frames into context latents.
"""

__version__ = "0.1.0"

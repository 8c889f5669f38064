"""Plug-ins for latent spaces and text encoders (the shapes world; Wan's VAE and umT5 live in hiar.wan)."""

from hiar.world.base import LatentCodec, TextEncoder

__all__ = ["LatentCodec", "TextEncoder"]

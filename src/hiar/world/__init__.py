"""Plug-ins for latent spaces and text encoders (the shapes world; Wan's VAE and umT5 live in hiar.wan)."""

from hiar.world.base import LatentCodec, TextEncoder
from hiar.world.shapes import (IdentityCodec, PromptTarget, ShapesDataset, ShapesSpec, ShapesTextEncoder,
                               ShapesWorld, ShapesWorldConfig, render_clip)

__all__ = ["LatentCodec", "TextEncoder", "IdentityCodec", "PromptTarget", "ShapesDataset", "ShapesSpec",
           "ShapesTextEncoder", "ShapesWorld", "ShapesWorldConfig", "render_clip"]

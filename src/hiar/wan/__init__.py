"""Wan2.1's latent space and text encoder as hiar plug-ins (optional extra ``hiar[wan]``).

* :class:`WanVAE` - the :class:`~hiar.world.base.LatentCodec` over diffusers' ``AutoencoderKLWan``;
* :class:`UMT5TextEncoder` - the :class:`~hiar.world.base.TextEncoder` over transformers'
  ``UMT5EncoderModel`` and its tokenizer.

Both load from local directories in the diffusers / transformers layout (the ``vae/``,
``text_encoder/`` and ``tokenizer/`` folders of a diffusers Wan pipeline, or such a pipeline folder
itself). diffusers and transformers are imported only when a plug-in is built.
"""

from hiar.wan.text import UMT5TextEncoder
from hiar.wan.vae import WanVAE

__all__ = ["WanVAE", "UMT5TextEncoder"]

"""Wan2.1's umT5-XXL text encoder as a :class:`~hiar.world.base.TextEncoder`."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import torch

from hiar.wan._paths import component_dir

WAN_TEXT_LEN = 512


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning (``basic_clean`` + ``whitespace_clean``; ftfy's fixes when installed)."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class UMT5TextEncoder:
    """Prompts -> ``[B, max_len, d_model]`` encoder states, zero after each prompt's tokens.

    As Wan's ``T5EncoderModel``: the prompt is cleaned, tokenised with the end-of-sequence token and
    padded to ``max_len`` (512), encoded with the padding masked out, and each prompt keeps only its
    own ``seq_len`` states (``u[:v]``) - the rest is zero, which is what the DiT's zero padding of the
    per-prompt list produces.
    """

    def __init__(self, model, tokenizer, *, max_len: int = WAN_TEXT_LEN, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None):
        self.model = model.eval().requires_grad_(False)
        if device is not None or dtype is not None:
            self.model.to(device=device, dtype=dtype)
        self.tokenizer = tokenizer
        self.max_len = int(max_len)
        self.dim = int(model.config.d_model)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, tokenizer_path: str | os.PathLike | None = None,
                        max_len: int = WAN_TEXT_LEN, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "UMT5TextEncoder":
        """Load ``UMT5EncoderModel`` from a local folder (or the ``text_encoder/`` folder of a pipeline)
        and its tokenizer from ``tokenizer_path``, else the same folder, else a sibling / pipeline
        ``tokenizer/`` folder."""
        model_dir = component_dir(path, "text_encoder", "umT5 text encoder")
        if tokenizer_path is not None:
            tok_dir = component_dir(tokenizer_path, "tokenizer", "umT5 tokenizer")
        else:
            tok_dir = next(
                (d for d in (Path(path) / "tokenizer", model_dir, model_dir.parent / "tokenizer") if _has_tokenizer(d)),
                None,
            )
            if tok_dir is None:
                raise FileNotFoundError(
                    f"no tokenizer found in {model_dir} or {model_dir.parent / 'tokenizer'}; pass tokenizer_path"
                )
        from transformers import AutoTokenizer, UMT5EncoderModel

        model = UMT5EncoderModel.from_pretrained(str(model_dir), torch_dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        return cls(model, tokenizer, max_len=max_len, device=device, dtype=dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask ``[B, max_len]`` (truncated and padded)."""
        batch = self.tokenizer(
            [clean_prompt(p) for p in prompts], padding="max_length", max_length=self.max_len, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"]

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not a single string")
        ids, mask = self.tokenize(list(prompts))
        ids, mask = ids.to(self.device), mask.to(self.device)
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        seq_lens = mask.gt(0).sum(dim=1)
        keep = torch.arange(states.shape[1], device=states.device)[None, :] < seq_lens[:, None]
        return states.masked_fill(~keep[..., None], 0)


def _has_tokenizer(directory: Path) -> bool:
    return directory.is_dir() and any(
        (directory / name).is_file() for name in ("tokenizer.json", "spiece.model", "tokenizer_config.json")
    )

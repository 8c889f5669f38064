"""The learned metrics of the drift suite, loaded from local weight files only (nothing is downloaded).

=============  =====================================================================  ==========================
metric         implementation                                                         weights given as
=============  =====================================================================  ==========================
DINOv2         ``transformers.Dinov2Model``; CLS feature (``pooler_output``)           a local HF model folder
CLIP-IQA       ``transformers.CLIPModel`` + its tokenizer; antonym prompt pairs        a local HF model folder
LPIPS          own torch AlexNet/VGG16 with torchvision's parameter names + the        two files: backbone, lins
               lpips v0.1 linear layers (``lin0.model.1.weight`` ...)
MUSIQ          own torch network (``hiar.eval.musiq``), pyiqa's parameter names        pyiqa's ``.pth`` file
=============  =====================================================================  ==========================

Every loader raises :class:`FileNotFoundError` naming the path when it is missing, and
:class:`WeightMismatchError` listing the missing, unexpected and shape-mismatched keys when a
weight file does not fit. Weight files are read safely: safetensors, or
``torch.load(weights_only=True)``. Frames are ``[N, 3, H, W]`` float in [0, 1].
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from hiar.checkpoint import key_problems

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class WeightMismatchError(ValueError):
    """A weight file's keys or shapes do not fit the network."""


class MetricUnavailableError(ValueError):
    """A metric's backend cannot run in this environment."""


# --------------------------------------------------------------------------------- weight files
def load_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a ``.safetensors`` file or a ``.pt``/``.pth``/``.bin`` file read
    with ``torch.load(weights_only=True)``; a ``{"state_dict"| "params"| "model": {...}}`` wrapper and
    a ``module.`` prefix (DataParallel) are unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except SafetensorError as err:  # truncated or not a safetensors file at all
            raise WeightMismatchError(f"{path}: not a readable safetensors file ({err})") from None
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # pickle with arbitrary objects, or not a torch file at all
            raise WeightMismatchError(f"{path}: cannot be read as a weights-only torch file ({err})") from None
    for wrapper in ("state_dict", "params", "model"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightMismatchError(f"{path}: expected a mapping of parameter names to tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def mismatch_message(what: str, missing=(), unexpected=(), mismatched=()) -> str | None:
    """One readable message listing the key problems, or None when there are none."""
    parts = key_problems(list(missing), list(unexpected), {k: (a, b) for k, a, b in mismatched}, limit=12, found_in="file")
    return f"{what} does not fit the network -- " + "; ".join(parts) if parts else None


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], what: str,
                 prefix: str = "", ignore_unexpected: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module`` (keys under ``prefix``), refusing any missing, unexpected
    (unless they start with one of ``ignore_unexpected``) or shape-mismatched key."""
    own = {k: v for k, v in module.state_dict().items() if k.startswith(prefix)}
    given = {k: v for k, v in state.items() if not k.startswith(ignore_unexpected) or k in own} if ignore_unexpected else state
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    mismatched = [(k, given[k].shape, own[k].shape) for k in own if k in given and given[k].shape != own[k].shape]
    message = mismatch_message(what, missing, unexpected, mismatched)
    if message:
        raise WeightMismatchError(message)
    module.load_state_dict({**module.state_dict(), **{k: given[k] for k in own}})


def _resize(frames: torch.Tensor, size: int | tuple[int, int], mean, std) -> torch.Tensor:
    size = (size, size) if isinstance(size, int) else size
    x = frames.float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _hf_folder(path: str | Path, model_type: str, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} model folder not found: {path}")
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{what} model folder {path} has no config.json")
    found = json.loads(config.read_text()).get("model_type")
    if found != model_type:
        raise WeightMismatchError(f"{path}: config.json says model_type '{found}', expected '{model_type}' for {what}")
    return path


def _hf_load(cls, path: Path, what: str, device):
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(str(path), local_files_only=True, output_loading_info=True,
                                          ignore_mismatched_sizes=True)
    except OSError as err:
        raise FileNotFoundError(f"{what}: cannot load weights from {path} ({err})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    message = mismatch_message(f"{what} weights in {path}", info.get("missing_keys", ()),
                               info.get("unexpected_keys", ()), info.get("mismatched_keys", ()))
    if message:
        raise WeightMismatchError(message)
    return model.to(device).eval().requires_grad_(False)


# --------------------------------------------------------------------------------- DINOv2
class DinoV2Features:
    """DINOv2 image features: frames resized (whole frame, bicubic) to ``image_size`` and normalised
    with ImageNet statistics; the feature is the layer-normed CLS token (``pooler_output``)."""

    backend = "dinov2 (transformers)"

    def __init__(self, model, image_size: int = 224, batch_size: int = 16):
        self.model, self.image_size, self.batch_size = model.eval(), image_size, batch_size
        self.device = next(model.parameters()).device

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", image_size: int = 224) -> "DinoV2Features":
        from transformers import Dinov2Model

        folder = _hf_folder(path, "dinov2", "DINOv2")
        return cls(_hf_load(Dinov2Model, folder, "DINOv2", device), image_size=image_size)

    @torch.no_grad()
    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in frames.split(self.batch_size):
            x = _resize(chunk.to(self.device), self.image_size, IMAGENET_MEAN, IMAGENET_STD)
            out.append(self.model(pixel_values=x).pooler_output.float().cpu())
        return torch.cat(out)

    def consecutive_similarity(self, frames: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each frame's feature with the next frame's: ``[N - 1]``."""
        f = self.embed(frames)
        return F.cosine_similarity(f[:-1], f[1:], dim=-1)


# --------------------------------------------------------------------------------- CLIP-IQA
class ClipIQA:
    """CLIP-IQA (Wang et al., 2023): for each antonym prompt pair, the softmax over
    ``logit_scale * cos(image, prompt)`` of the positive prompt; the score is the mean over pairs,
    in [0, 1], higher is better. Default pair: "Good photo." / "Bad photo." (the paper's).

    The original uses CLIP's ResNet-50 without positional embedding (any resolution); this one runs
    whatever ``CLIPModel`` it is given (e.g. a ViT-B/32) at that model's input size, so its numbers
    are CLIP-IQA's idea on a different CLIP, not pyiqa's ``clipiqa`` values.
    """

    backend = "clip-iqa (transformers CLIP)"
    DEFAULT_PROMPTS = (("Good photo.", "Bad photo."),)

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 batch_size: int = 16):
        self.model, self.batch_size = model.eval(), batch_size
        self.device = next(model.parameters()).device
        self.image_size = model.config.vision_config.image_size
        if input_ids.dim() != 2 or input_ids.shape[0] % 2:
            raise ValueError(f"input_ids must be [2 * pairs, length] (positive, negative per pair), got {tuple(input_ids.shape)}")
        with torch.no_grad():
            kwargs = {} if attention_mask is None else {"attention_mask": attention_mask.to(self.device)}
            text = model.text_model(input_ids=input_ids.to(self.device), **kwargs).pooler_output
            self.text_features = F.normalize(model.text_projection(text).float(), dim=-1)  # [2P, D]

    @classmethod
    def from_model_and_tokenizer(cls, model, tokenizer, prompts=DEFAULT_PROMPTS) -> "ClipIQA":
        flat = [p for pair in prompts for p in pair]
        enc = tokenizer(flat, padding=True, return_tensors="pt")
        return cls(model, enc["input_ids"], enc.get("attention_mask"))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", prompts=DEFAULT_PROMPTS) -> "ClipIQA":
        from transformers import AutoTokenizer, CLIPModel

        folder = _hf_folder(path, "clip", "CLIP-IQA (CLIP)")
        model = _hf_load(CLIPModel, folder, "CLIP-IQA (CLIP)", device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(f"CLIP-IQA: no usable tokenizer in {folder} ({err})") from None
        return cls.from_model_and_tokenizer(model, tokenizer, prompts)

    @torch.no_grad()
    def score(self, frames: torch.Tensor) -> torch.Tensor:
        out = []
        scale = self.model.logit_scale.exp().float().cpu()
        for chunk in frames.split(self.batch_size):
            x = _resize(chunk.to(self.device), self.image_size, CLIP_MEAN, CLIP_STD)
            img = self.model.vision_model(pixel_values=x).pooler_output
            img = F.normalize(self.model.visual_projection(img).float(), dim=-1).cpu()
            logits = scale * img @ self.text_features.cpu().T  # [N, 2P]
            probs = logits.view(len(img), -1, 2).softmax(dim=-1)[..., 0]  # [N, P]
            out.append(probs.mean(dim=-1))
        return torch.cat(out)


# --------------------------------------------------------------------------------- LPIPS
_ALEX = [("conv", 3, 64, 11, 4, 2), ("relu",), ("pool",), ("conv", 64, 192, 5, 1, 2), ("relu",), ("pool",),
         ("conv", 192, 384, 3, 1, 1), ("relu",), ("conv", 384, 256, 3, 1, 1), ("relu",),
         ("conv", 256, 256, 3, 1, 1), ("relu",)]
_ALEX_TAPS, _ALEX_CHANNELS = (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)
_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG_TAPS, _VGG_CHANNELS = (3, 8, 15, 22, 29), (64, 128, 256, 512, 512)


def _lpips_features(net: str) -> tuple[nn.Sequential, tuple[int, ...], tuple[int, ...]]:
    layers: list[nn.Module] = []
    if net == "alex":
        for spec in _ALEX:
            if spec[0] == "conv":
                _, cin, cout, k, s, p = spec
                layers.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
            elif spec[0] == "relu":
                layers.append(nn.ReLU())
            else:
                layers.append(nn.MaxPool2d(3, 2))
        return nn.Sequential(*layers), _ALEX_TAPS, _ALEX_CHANNELS
    if net == "vgg":
        cin = 3
        for v in _VGG_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        return nn.Sequential(*layers), _VGG_TAPS, _VGG_CHANNELS
    raise ValueError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")


class _Lin(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """LPIPS v0.1 (Zhang et al., 2018): backbone features at five ReLUs, unit-normalised over
    channels, squared difference, learned 1x1 linear weights, spatial mean, summed over layers.

    Parameter names follow torchvision (``features.0.weight`` ...) for the backbone and the lpips
    package (``lin0.model.1.weight`` ...) for the linear layers, so the official files load:
    torchvision's ``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth`` and lpips'
    ``weights/v0.1/alex.pth`` / ``vgg.pth``. Inputs ``[N, 3, H, W]`` in [0, 1]; frames smaller than
    ``min_size`` are upscaled (nearest) so that AlexNet's five layers have a spatial extent.
    """

    backend_name = "lpips"
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self, net: str = "alex", min_size: int = 64):
        super().__init__()
        self.net_name = net
        self.features, self.taps, channels = _lpips_features(net)
        for i, c in enumerate(channels):
            setattr(self, f"lin{i}", _Lin(c))
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1), persistent=False)
        self.min_size = min_size
        self.eval().requires_grad_(False)

    @property
    def backend(self) -> str:
        return f"lpips-{self.net_name} (own torch network)"

    @classmethod
    def from_files(cls, lin_path: str | Path, backbone_path: str | Path, net: str = "alex",
                   device: str = "cpu") -> "LPIPS":
        """Backbone from a torchvision ``AlexNet``/``VGG16`` state dict (its ``classifier.*`` keys are
        ignored), linear layers from an lpips v0.1 file (exactly ``lin0..lin4.model.1.weight``)."""
        model = cls(net)
        backbone = load_weight_file(backbone_path)
        load_checked(model, backbone, f"LPIPS {net} backbone file {backbone_path}", prefix="features.",
                     ignore_unexpected=("classifier.", "avgpool."))
        lins = load_weight_file(lin_path)
        load_checked(model, lins, f"LPIPS linear-layer file {lin_path}", prefix="lin")
        return model.to(device)

    def _layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        last = max(self.taps)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
            if i == last:
                break
        return out

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance ``[N]`` between image batches ``a`` and ``b`` in [0, 1]."""
        device = self.shift.device
        a, b = a.to(device).float(), b.to(device).float()
        if min(a.shape[-2:]) < self.min_size:
            factor = -(-self.min_size // min(a.shape[-2:]))
            a = F.interpolate(a, scale_factor=factor, mode="nearest")
            b = F.interpolate(b, scale_factor=factor, mode="nearest")
        fa = self._layers((a * 2 - 1 - self.shift) / self.scale)
        fb = self._layers((b * 2 - 1 - self.shift) / self.scale)
        total = torch.zeros(a.shape[0], device=device)
        for i, (x, y) in enumerate(zip(fa, fb)):
            x = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            y = y / (y.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total += getattr(self, f"lin{i}").model((x - y) ** 2).mean(dim=(1, 2, 3))
        return total.cpu()

    def consecutive_distance(self, frames: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """LPIPS between each frame and the next: ``[N - 1]``."""
        n = len(frames) - 1
        return torch.cat([self(frames[i:min(i + batch_size, n)], frames[i + 1:min(i + batch_size, n) + 1])
                          for i in range(0, n, batch_size)])


# --------------------------------------------------------------------------------- MUSIQ
class Musiq:
    """MUSIQ (Ke et al., 2021) on hiar's own network (:class:`hiar.eval.musiq.MusiqNet`), whose
    parameter names and shapes are pyiqa's, so pyiqa's released ``musiq_*_ckpt-*.pth`` files load
    (read with ``torch.load(weights_only=True)`` and a strict key check). pyiqa itself is not used.
    Scores: about 0-100 for the KonIQ/SPAQ/PaQ-2-PiQ heads (1 output), 1-10 for AVA (10 bins)."""

    backend = "musiq (own torch network, pyiqa weights)"

    def __init__(self, net: nn.Module, batch_size: int = 8):
        self.net, self.batch_size = net.eval().requires_grad_(False), batch_size
        self.device = next(net.parameters()).device

    @classmethod
    def from_file(cls, path: str | Path, device: str = "cpu", **arch) -> "Musiq":
        """Weights from a pyiqa MUSIQ file. The head's size is read from the file (``head.weight``:
        one output, ``head.0.weight``: a distribution); other ``arch`` arguments go to
        :class:`~hiar.eval.musiq.MusiqNet` (defaults: the released models' configuration)."""
        from hiar.eval.musiq import MusiqNet

        state = load_weight_file(path)  # FileNotFoundError before anything else
        head = state.get("head.weight", state.get("head.0.weight"))
        if head is not None and head.dim() == 2 and "num_class" not in arch:
            arch["num_class"] = int(head.shape[0])
        net = MusiqNet(**arch)
        load_checked(net, state, f"MUSIQ weight file {path}")
        return cls(net.to(device))

    @torch.no_grad()
    def score(self, frames: torch.Tensor) -> torch.Tensor:
        """One score per frame: ``[N]`` for frames ``[N, 3, H, W]`` in [0, 1]."""
        return torch.cat([self.net(chunk.to(self.device).float()).float().cpu()
                          for chunk in frames.split(self.batch_size)])

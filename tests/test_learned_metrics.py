"""Learned drift metrics on tiny random networks of the real classes; loaders refuse bad weights.

Nothing is downloaded: every network here is randomly initialised and saved to a temp folder.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from hiar.eval.drift import DriftConfig, DriftSuite
from hiar.eval.learned import LPIPS, ClipIQA, DinoV2Features, Musiq, WeightMismatchError, load_weight_file
from hiar.eval.musiq import MusiqNet, hashed_grid_cells

from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model, PreTrainedTokenizerFast


def _frames(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


# ------------------------------------------------------------------------------ tiny networks
@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)
    path = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(cfg).save_pretrained(path)
    return path


def _tiny_tokenizer():
    """A word-level tokenizer built here (CLIP's real BPE tokenizer files cannot be fetched)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = ["<pad>", "<bos>", "<eos>", "<unk>", "good", "bad", "photo", "image", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>"), len(words)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer, vocab = _tiny_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    path = tmp_path_factory.mktemp("clip")
    CLIPModel(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """Random weights in the official layouts: a torchvision AlexNet state dict (features + classifier)
    and an lpips v0.1 linear-layer file."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lpips")
    net = LPIPS("alex")
    backbone = {k: torch.randn_like(v) * 0.05 for k, v in net.state_dict().items() if k.startswith("features.")}
    backbone.update({"classifier.1.weight": torch.randn(16, 9216), "classifier.1.bias": torch.zeros(16)})
    lins = {k: torch.rand_like(v) for k, v in net.state_dict().items() if k.startswith("lin")}
    torch.save(backbone, path / "alexnet.pth")
    torch.save(lins, path / "alex.pth")
    return path / "alex.pth", path / "alexnet.pth"


# ------------------------------------------------------------------------------ DINOv2
def test_dinov2_runs_on_a_tiny_random_network(dino_dir):
    dino = DinoV2Features.from_pretrained(dino_dir, image_size=32)
    x = _frames()
    sim = dino.consecutive_similarity(x)
    assert sim.shape == (5,) and (sim <= 1 + 1e-5).all() and (sim >= -1 - 1e-5).all()
    same = dino.consecutive_similarity(x[:1].repeat(3, 1, 1, 1))
    assert torch.allclose(same, torch.ones(2), atol=1e-5)
    assert dino.embed(_frames(2, size=48)).shape == (2, 32)  # any frame size is resized


def test_dinov2_loader_refuses_missing_and_mismatched(dino_dir, clip_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DinoV2Features.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        DinoV2Features.from_pretrained(tmp_path / "empty")
    with pytest.raises(WeightMismatchError, match="model_type 'clip'"):
        DinoV2Features.from_pretrained(clip_dir)
    # shapes that do not match the config
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((dino_dir / "config.json").read_text())
    cfg.update(hidden_size=48, intermediate_size=96)
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").write_bytes((dino_dir / "model.safetensors").read_bytes())
    with pytest.raises(WeightMismatchError, match=r"shape mismatch\(es\): .*\(file \[.*32.*\] vs model \[.*48"):
        DinoV2Features.from_pretrained(bad)
    # a missing and an unexpected key
    cfg["hidden_size"], cfg["intermediate_size"] = 32, 64
    (bad / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(dino_dir / "model.safetensors"))
    state.pop("layernorm.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightMismatchError) as err:
        DinoV2Features.from_pretrained(bad)
    assert "1 missing key(s): layernorm.weight" in str(err.value) and "1 unexpected key(s): extra.weight" in str(err.value)


# ------------------------------------------------------------------------------ CLIP-IQA
def test_clip_iqa_runs_on_a_tiny_random_network(clip_dir):
    iqa = ClipIQA.from_pretrained(clip_dir)
    scores = iqa.score(_frames(5, size=40))
    assert scores.shape == (5,) and (scores >= 0).all() and (scores <= 1).all()
    assert not torch.allclose(scores, scores[:1].expand(5))  # depends on the image
    two_pairs = ClipIQA.from_pretrained(clip_dir, prompts=(("Good photo.", "Bad photo."), ("Good image.", "Bad image.")))
    assert two_pairs.text_features.shape == (4, 16)
    # pre-tokenised prompts give the same scores as the tokenizer's
    model = CLIPModel.from_pretrained(str(clip_dir))
    ids = torch.tensor([[1, 4, 6, 8, 2], [1, 5, 6, 8, 2]])
    assert torch.allclose(ClipIQA(model, ids).score(_frames(5, size=40)), scores, atol=1e-5)


def test_clip_iqa_loader_refuses_missing_and_mismatched(clip_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_clip"):
        ClipIQA.from_pretrained(tmp_path / "no_clip")
    bad = tmp_path / "bad_clip"
    bad.mkdir()
    for f in clip_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["projection_dim"] = 24
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightMismatchError, match="text_projection.weight"):
        ClipIQA.from_pretrained(bad)


# ------------------------------------------------------------------------------ LPIPS
def test_lpips_runs_on_random_weights_from_official_layout_files(lpips_files):
    lin, backbone = lpips_files
    lp = LPIPS.from_files(lin, backbone, net="alex")
    x = _frames(4)
    assert torch.allclose(lp(x, x), torch.zeros(4), atol=1e-6)
    d = lp.consecutive_distance(x)
    assert d.shape == (3,) and (d > 0).all()
    # weights really loaded (not the random init of a fresh module)
    assert torch.equal(lp.features[0].weight, torch.load(backbone, weights_only=True)["features.0.weight"])
    assert lp.backend.startswith("lpips-alex")


def test_lpips_vgg_architecture_runs():
    vgg = LPIPS("vgg")
    assert vgg(_frames(2), _frames(2, seed=1)).shape == (2,)
    names = set(vgg.state_dict())
    assert {"features.28.weight", "lin4.model.1.weight"} <= names and all(
        not k.startswith("classifier") for k in names)


def test_lpips_loader_refuses_missing_and_mismatched(lpips_files, tmp_path):
    lin, backbone = lpips_files
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        LPIPS.from_files(tmp_path / "missing.pth", backbone)
    lins = torch.load(lin, weights_only=True)
    wrong = dict(lins)
    wrong["lin0.model.1.weight"] = torch.zeros(1, 32, 1, 1)
    del wrong["lin4.model.1.weight"]
    wrong["lin5.model.1.weight"] = torch.zeros(1, 8, 1, 1)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(WeightMismatchError) as err:
        LPIPS.from_files(tmp_path / "wrong.pth", backbone)
    message = str(err.value)
    assert "missing key(s): lin4.model.1.weight" in message
    assert "unexpected key(s): lin5.model.1.weight" in message
    assert "lin0.model.1.weight (file [1, 32, 1, 1] vs model [1, 64, 1, 1])" in message
    with pytest.raises(WeightMismatchError, match="features"):
        LPIPS.from_files(lin, backbone, net="vgg")  # AlexNet weights for VGG
    save_file({k: v.contiguous() for k, v in lins.items()}, str(tmp_path / "lins.safetensors"))
    assert isinstance(LPIPS.from_files(tmp_path / "lins.safetensors", backbone), LPIPS)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_weight_files_are_never_unpickled_freely(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"lin0.model.1.weight": Payload()}, f)
    with pytest.raises(WeightMismatchError, match="weights-only"):
        load_weight_file(path)
    torch.save({"state_dict": {"module.a": torch.zeros(1)}}, tmp_path / "wrapped.pt")
    assert list(load_weight_file(tmp_path / "wrapped.pt")) == ["a"]


# ------------------------------------------------------------------------------ MUSIQ
TINY_MUSIQ = dict(hidden_size=32, mlp_dim=64, num_heads=2, num_layers=1)


@pytest.fixture(scope="module")
def musiq_file(tmp_path_factory):
    """Random weights of a tiny configuration of the real network, saved as pyiqa saves them."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("musiq") / "musiq_tiny.pth"
    torch.save(MusiqNet(**TINY_MUSIQ).state_dict(), path)
    return path


def test_musiq_has_pyiqas_parameter_layout():
    state = MusiqNet().state_dict()  # the released configuration
    assert state["embedding.weight"].shape == (384, 256 * 8 * 8)
    assert state["transformer_encoder.posembed_input.position_emb"].shape == (1, 100, 384)
    assert state["transformer_encoder.scaleembed_input.scale_emb"].shape == (3, 384)
    assert state["transformer_encoder.transformer.encoderblock_13.attention.query.weight"].shape == (384, 384)
    assert state["block1.conv_proj.weight"].shape == (256, 64, 1, 1) and state["head.weight"].shape == (1, 384)
    assert sum(v.numel() for v in state.values()) == 27_125_825
    assert {"head.0.weight", "head.0.bias"} <= set(MusiqNet(num_class=10, **TINY_MUSIQ).state_dict())


def test_musiq_hashed_positions_cover_the_grid():
    assert hashed_grid_cells(1, 1, 10).tolist() == [0]
    cells = hashed_grid_cells(7, 12, 10).view(7, 12)
    # torch's "nearest" rule, floor(i * G / n), per axis (as pyiqa); row-major cell = row * G + col
    assert (cells[:, 0] // 10).tolist() == [0, 1, 2, 4, 5, 7, 8]
    assert (cells[0] % 10).tolist() == [0, 0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9]
    assert hashed_grid_cells(20, 20, 10).view(20, 20)[::2, ::2].flatten().tolist() == list(range(100))


def test_musiq_runs_on_a_tiny_random_network(musiq_file):
    musiq = Musiq.from_file(musiq_file, **TINY_MUSIQ)
    assert torch.equal(musiq.net.embedding.weight, torch.load(musiq_file, weights_only=True)["embedding.weight"])
    x = _frames(3, size=40)
    scores = musiq.score(x)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    assert torch.equal(scores, musiq.score(x))  # deterministic
    assert not torch.allclose(scores, scores[:1].expand(3))  # depends on the frame
    # per-frame: a frame's score does not depend on the frames batched with it
    assert torch.allclose(musiq.score(x[1:2]), scores[1:2], atol=1e-5)
    wide = musiq.score(torch.rand(2, 3, 48, 80, generator=torch.Generator().manual_seed(1)))
    assert wide.shape == (2,) and torch.isfinite(wide).all()  # any size and aspect ratio
    assert musiq.backend.startswith("musiq (own torch network")


def test_musiq_ava_head_gives_a_mean_opinion_score(tmp_path):
    torch.manual_seed(0)
    torch.save(MusiqNet(num_class=10, **TINY_MUSIQ).state_dict(), tmp_path / "ava.pth")
    musiq = Musiq.from_file(tmp_path / "ava.pth", **TINY_MUSIQ)  # the 10-bin head is read from the file
    assert musiq.net.num_class == 10
    scores = musiq.score(_frames(2))
    assert ((scores >= 1) & (scores <= 10)).all()


def test_musiq_loader_refuses_missing_and_mismatched(musiq_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="musiq.pth"):
        Musiq.from_file(tmp_path / "musiq.pth")
    state = torch.load(musiq_file, weights_only=True)
    bad = dict(state)
    del bad["transformer_encoder.encoder_norm.bias"]
    bad["transformer_encoder.extra"] = torch.zeros(1)
    bad["transformer_encoder.scaleembed_input.scale_emb"] = torch.zeros(4, 32)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightMismatchError) as err:
        Musiq.from_file(tmp_path / "bad.pth", **TINY_MUSIQ)
    message = str(err.value)
    assert "missing key(s): transformer_encoder.encoder_norm.bias" in message
    assert "unexpected key(s): transformer_encoder.extra" in message
    assert "transformer_encoder.scaleembed_input.scale_emb (file [4, 32] vs model [3, 32])" in message
    with pytest.raises(WeightMismatchError, match=r"shape mismatch\(es\): .*embedding.weight"):
        Musiq.from_file(musiq_file)  # tiny weights into the released configuration


# ------------------------------------------------------------------------------ in the drift suite
def test_drift_suite_uses_the_learned_backends(dino_dir, clip_dir, lpips_files):
    lin, backbone = lpips_files
    suite = DriftSuite.from_config(DriftConfig(dinov2=str(dino_dir), clip_iqa=str(clip_dir), lpips=str(lin),
                                               lpips_backbone=str(backbone)))
    suite.dinov2.image_size = 32  # the tiny network's size (real DINOv2 runs at 224)
    report = suite.evaluate_unit(_frames(20))
    assert report.learned == {"quality_musiq": False, "quality_clipiqa": True, "coherence_dinov2": True,
                              "coherence_lpips": True, "saturation": False, "sharpness": False, "colour_shift": False}
    assert report.backends["coherence_dinov2"].startswith("dinov2")
    assert report.backends["coherence_lpips"].startswith("lpips-alex")
    assert report.backends["quality_musiq"].endswith("(stand-in)")
    assert torch.isfinite(torch.tensor(report.score))

"""The Wan DiT's autoregressive machinery against independent references.

The reference for block-causal attention is a dense [L, L] mask built here from the visibility rule
(written out again, not imported) and plain softmax attention; it replaces ``hiar.model``'s masked
attention for one full-sequence forward, while the cached runs use the library's kernel, KV cache
and ring buffer.
"""

import math

import pytest
import torch

import hiar.model as M
from hiar.attention import BIDIRECTIONAL, AttentionSpec, KVCache, block_causal
from hiar.model import RotaryEmbedding, WanConfig, WanModel

CFG = M.PRESETS["tiny"]  # dim 48, 2 heads of 24, 2 layers, 4 channels, patch (1, 2, 2), text 8 x 16
B, H, W = 2, 4, 6  # 2 x 3 = 6 tokens per frame
T = (H // 2) * (W // 2)


def random_model(cfg: WanConfig = CFG, seed: int = 0) -> WanModel:
    """A model with every weight random (Wan's init zeroes the head, which would hide everything)."""
    torch.manual_seed(seed)
    model = WanModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "modulation" not in name:
                p.normal_(0, 1 / math.sqrt(p[0].numel()))
            elif name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or "norm3.weight" in name:
                p.normal_(1, 0.2)
            else:
                p.normal_(0, 0.2)
    return model


def inputs(frames: int, seed: int = 1, batch: int = B):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, CFG.in_dim, frames, H, W, generator=g)
    text = torch.randn(batch, 5, CFG.text_dim, generator=g)  # shorter than text_len: padded by the model
    return x, text


# -- the independent reference ------------------------------------------------------------------


def reference_visible(qf: int, kf: int, spec: AttentionSpec) -> bool:
    """The visibility rule, written out: same-or-earlier block, inside the window or a sink frame."""
    if kf < 0:
        return False
    if not spec.causal:
        return True
    k = spec.block_frames
    if kf // k > qf // k:
        return False
    if spec.window is None:
        return True
    first_in_window = (qf // k + 1) * k - spec.window
    return kf >= first_in_window or kf < spec.sink


def dense_attention(q, k, v, query_frames, key_frames, spec, tokens_per_frame, record=None):
    """Plain softmax attention under a dense [Lq, Lk] boolean mask (float64 inside)."""
    G = query_frames.shape[0]
    Bg = q.shape[0] // G
    out = torch.empty_like(q)
    for g in range(G):
        qfr = query_frames[g].repeat_interleave(tokens_per_frame).tolist()
        kfr = key_frames[g].repeat_interleave(tokens_per_frame).tolist()
        mask = torch.tensor([[reference_visible(a, b, spec) for b in kfr] for a in qfr])
        rows = slice(g * Bg, (g + 1) * Bg)
        qq, kk, vv = (t[rows].double().transpose(1, 2) for t in (q, k, v))  # [b, H, L, D]
        scores = qq @ kk.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~mask, float("-inf"))
        out[rows] = (scores.softmax(-1) @ vv).transpose(1, 2).to(q.dtype)
    if record is not None:
        record.append(k.detach().clone())
    return out


@pytest.fixture
def dense(monkeypatch):
    """Swap the library's attention kernel for the dense reference; returns the recorded keys."""
    keys = []
    monkeypatch.setattr(M, "masked_attention", lambda *a: dense_attention(*a, record=keys))
    return keys


def full_forward(model, x, t, text, spec, monkeypatch):
    keys = []
    with monkeypatch.context() as mp:
        mp.setattr(M, "masked_attention", lambda *a: dense_attention(*a, record=keys))
        out = model(x, t, text, attention=spec)
    return out, keys


# -- cached block-by-block inference == one full-sequence forward --------------------------------

SPECS = [
    pytest.param(2, None, 0, id="k2-unbounded"),
    pytest.param(2, 6, 0, id="k2-window6"),
    pytest.param(2, 6, 2, id="k2-window6-sink2"),
    pytest.param(3, 6, 1, id="k3-window6-sink1"),
    pytest.param(2, 5, 3, id="k2-window5-sink3"),
    pytest.param(2, 2, 0, id="k2-no-context"),
    pytest.param(1, 3, 1, id="k1-window3-sink1"),
]


@torch.no_grad()
@pytest.mark.parametrize("k, window, sink", SPECS)
def test_cached_inference_equals_full_sequence(k, window, sink, monkeypatch):
    model = random_model()
    spec = block_causal(k, window, sink)
    nblocks = 6
    x, text = inputs(nblocks * k)
    t = torch.tensor([700.0, 300.0])
    ref, _ = full_forward(model, x, t, text, spec, monkeypatch)
    assert ref.abs().mean() > 0.1  # non-trivial outputs

    cache = model.new_cache(spec)
    ctx = model.encode_text(text)
    outs = []
    for n in range(nblocks):
        outs.append(model(x[:, :, n * k:(n + 1) * k], t, ctx, attention=spec, cache=cache, write_frames=k))
    got = torch.cat(outs, dim=2)
    assert (got - ref).abs().max() <= 1e-5
    assert cache.writes == nblocks


@torch.no_grad()
def test_full_sequence_reference_really_is_masked(monkeypatch):
    """Sanity check of the reference itself: the last block's output moves when an early frame
    inside the window changes, and not when a frame outside it does (one layer: with more, the
    window's reach grows layer by layer through the frames in between)."""
    from dataclasses import replace

    model = random_model(replace(CFG, num_layers=1))
    spec = block_causal(2, window=4)
    x, text = inputs(8)
    t = torch.tensor([500.0, 500.0])
    ref, _ = full_forward(model, x, t, text, spec, monkeypatch)
    x_out = x.clone()
    x_out[:, :, 3] += 1  # frame 3: outside the last block's window (frames 4..7)
    x_in = x.clone()
    x_in[:, :, 5] += 1  # frame 5: inside
    out_out, _ = full_forward(model, x_out, t, text, spec, monkeypatch)
    out_in, _ = full_forward(model, x_in, t, text, spec, monkeypatch)
    assert torch.equal(out_out[:, :, 6:], ref[:, :, 6:])
    assert (out_in[:, :, 6:] - ref[:, :, 6:]).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("k, window, sink", SPECS[1:5])
def test_ring_buffer_memory_constant_and_content(k, window, sink, monkeypatch):
    model = random_model()
    spec = block_causal(k, window, sink)
    nblocks = 7
    x, text = inputs(nblocks * k)
    t = torch.tensor([600.0, 600.0])
    _, keys = full_forward(model, x, t, text, spec, monkeypatch)  # layer i's keys, all frames
    cap = spec.cache_frames
    shape = (B, cap * T, CFG.num_heads, CFG.head_dim)
    cache = model.new_cache(spec)
    sizes = []
    for n in range(nblocks):
        model(x[:, :, n * k:(n + 1) * k], t, text, attention=spec, cache=cache, write_frames=k)
        written = (n + 1) * k
        sizes.append(cache.nbytes())
        if written >= cap:
            for layer in range(CFG.num_layers):
                assert tuple(cache.k[layer].shape) == shape and tuple(cache.v[layer].shape) == shape
            assert cache.num_frames == cap
        # which frames the cache holds: the sink frames and the most recent others
        held = sorted(cache.frames()[cache.frames() >= 0].tolist())
        sinks = [f for f in range(min(sink, written))]
        recent = [f for f in range(written) if f >= sink][-(cap - sink):] if cap > sink else []
        assert held == sinks + recent
        assert cache.next_frame == written
        # what each slot holds is that frame's key, as the full-sequence forward computed it
        for slot, f in enumerate(cache.frames().tolist()):
            if f < 0:
                continue
            for layer in range(CFG.num_layers):
                want = keys[layer][:, f * T:(f + 1) * T]
                got = cache.k[layer][:, slot * T:(slot + 1) * T]
                assert (got - want).abs().max() <= 1e-5, (n, slot, f, layer)
    full_from = next(i for i in range(nblocks) if (i + 1) * k >= cap)
    assert len(set(sizes[full_from:])) == 1, f"cache memory grew past the window: {sizes}"


@torch.no_grad()
def test_unbounded_cache_grows():
    model = random_model()
    spec = block_causal(2)
    x, text = inputs(6)
    cache = model.new_cache(spec)
    for n in range(3):
        model(x[:, :, 2 * n:2 * n + 2], torch.tensor([100.0, 100.0]), text, attention=spec, cache=cache, write_frames=2)
        assert cache.k[0].shape[1] == (n + 1) * 2 * T
    assert cache.frames().tolist() == list(range(6))


@torch.no_grad()
def test_cached_frame_indices_stay_on_the_cpu_with_the_positions():
    """Frame bookkeeping lives on the CPU (masks are built there, then moved): reading a cache for a
    call on another device must not move its frame indices (on CUDA the cat with the CPU positions
    failed). The ``meta`` device stands in for a GPU here."""
    model = random_model()
    spec = block_causal(2)
    x, text = inputs(2)
    cache = model.new_cache(spec)
    model(x, torch.tensor([100.0, 100.0]), text, attention=spec, cache=cache, write_frames=2)
    k, v, frames = M._gather_cache([cache], 0, like=torch.empty(2, 4, 2, 8, device="meta"))
    assert frames.device.type == "cpu" and frames.tolist() == [[0, 1]]


# -- the fused call -----------------------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("k, window, sink", [pytest.param(3, None, 0, id="unbounded"), pytest.param(3, 6, 3, id="window6-sink3")])
def test_fused_call_equals_the_two_calls_it_replaces(k, window, sink):
    """[context block n at t_c, new block n+1 at t_new] with write_frames=k == a write call for
    block n at t_c, then a read-only call for block n+1 at t_new."""
    model = random_model()
    spec = block_causal(k, window, sink)
    nblocks = 5
    x_ctx, text = inputs(nblocks * k, seed=2)
    x_new, _ = inputs(nblocks * k, seed=3)
    t_c, t_new = 250.0, 625.0
    blk = lambda v, n: v[:, :, n * k:(n + 1) * k]
    separate, fused = model.new_cache(spec), model.new_cache(spec)
    ctx = model.encode_text(text)

    # block 0 has no context: both start with a plain denoise
    a = model(blk(x_new, 0), torch.full((B,), t_new), ctx, attention=spec, cache=separate)
    b = model(blk(x_new, 0), torch.full((B,), t_new), ctx, attention=spec, cache=fused)
    assert torch.equal(a, b)
    for n in range(nblocks - 1):
        w = model(blk(x_ctx, n), torch.full((B,), t_c), ctx, attention=spec, cache=separate, write_frames=k)
        a = model(blk(x_new, n + 1), torch.full((B,), t_new), ctx, attention=spec, cache=separate)
        tt = torch.tensor([t_c] * k + [t_new] * k).expand(B, -1)
        both = model(torch.cat([blk(x_ctx, n), blk(x_new, n + 1)], dim=2), tt, ctx, attention=spec, cache=fused, write_frames=k)
        assert (both[:, :, k:] - a).abs().max() <= 1e-5
        assert (both[:, :, :k] - w).abs().max() <= 1e-5
        assert torch.equal(separate.frames(), fused.frames())
        for layer in range(CFG.num_layers):
            assert (separate.k[layer] - fused.k[layer]).abs().max() <= 1e-5
            assert (separate.v[layer] - fused.v[layer]).abs().max() <= 1e-5
    assert fused.writes == separate.writes == nblocks - 1


@torch.no_grad()
def test_cache_groups_equal_separate_calls():
    """One batched call over two caches with different histories (the diagonal order's batching)."""
    model = random_model()
    spec = block_causal(2, window=4)
    x, text = inputs(8, batch=1)
    t = torch.tensor([400.0])
    c1, c2 = model.new_cache(spec), model.new_cache(spec)
    for n in range(3):
        model(x[:, :, 2 * n:2 * n + 2], t, text, attention=spec, cache=c1, write_frames=2)
    model(x[:, :, 0:2], t, text, attention=spec, cache=c2, write_frames=2)
    new = torch.randn(1, CFG.in_dim, 2, H, W)
    one = model(new, t, text, attention=spec, cache=c1)
    two = model(new, t, text, attention=spec, cache=c2)
    batched = model(new.repeat(2, 1, 1, 1, 1), t.repeat(2), text, attention=spec, cache=[c1, c2])
    assert (batched[:1] - one).abs().max() <= 1e-5
    assert (batched[1:] - two).abs().max() <= 1e-5
    assert (one - two).abs().max() > 1e-4  # the histories matter


# -- per-frame timesteps ------------------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("spec", [BIDIRECTIONAL, block_causal(2)], ids=["bidirectional", "causal"])
def test_per_frame_timesteps_all_equal_equal_the_scalar(spec):
    model = random_model()
    x, text = inputs(4)
    scalar = model(x, torch.tensor([300.0, 800.0]), text, attention=spec)
    # Sample 0 has equal per-frame levels; sample 1 does not, so the per-frame path really runs.
    per_frame = torch.tensor([[300.0] * 4, [800.0, 800.0, 100.0, 100.0]])
    mixed = model(x, per_frame, text, attention=spec)
    assert (mixed[0] - scalar[0]).abs().max() <= 1e-5
    assert (mixed[1] - scalar[1]).abs().max() > 1e-3
    same = model(x, torch.tensor([[300.0] * 4, [800.0] * 4]), text, attention=spec)
    assert (same - scalar).abs().max() <= 1e-6


@torch.no_grad()
def test_per_frame_timesteps_equal_blocks_run_at_their_own_level(monkeypatch):
    """Diffusion forcing: one causal forward with a level per block == each block run on its own
    (through the cache) at its scalar level."""
    model = random_model()
    k, nblocks = 2, 4
    spec = block_causal(k, window=4, sink=1)
    x, text = inputs(k * nblocks)
    levels = torch.tensor([[900.0, 500.0, 250.0, 50.0], [10.0, 990.0, 400.0, 700.0]])
    per_frame = levels.repeat_interleave(k, dim=1)
    ref, _ = full_forward(model, x, per_frame, text, spec, monkeypatch)
    lib = model(x, per_frame, text, attention=spec)  # the library kernel on the full sequence, too
    assert (lib - ref).abs().max() <= 1e-5
    cache = model.new_cache(spec)
    outs = [model(x[:, :, n * k:(n + 1) * k], levels[:, n], text, attention=spec, cache=cache, write_frames=k) for n in range(nblocks)]
    assert (torch.cat(outs, dim=2) - ref).abs().max() <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("k", [1, 2])
def test_changing_one_frames_timestep_changes_only_later_frames_under_causal(k):
    model = random_model()
    x, text = inputs(6)
    t = torch.full((B, 6), 500.0)
    t2 = t.clone()
    t2[:, 2] = 100.0  # frame 2 opens block 2 (k=1) or block 1 (k=2)
    for spec in (block_causal(k),):
        a = model(x, t, text, attention=spec)
        b = model(x, t2, text, attention=spec)
        diff = (a - b).abs().amax(dim=(0, 1, 3, 4))  # per frame
        assert torch.all(diff[:2] <= 1e-5), diff
        assert torch.all(diff[2:] > 1e-4), diff
    a = model(x, t, text)
    b = model(x, t2, text)
    diff = (a - b).abs().amax(dim=(0, 1, 3, 4))
    assert torch.all(diff > 1e-4), diff  # bidirectional: everything moves


# -- RoPE at any frame --------------------------------------------------------------------------


@pytest.mark.parametrize("base", [5000, 123_456])
def test_rope_logits_depend_only_on_frame_difference(base):
    rope = RotaryEmbedding(CFG.head_dim)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, CFG.head_dim, generator=g)
    k = torch.randn(1, 1, 1, CFG.head_dim, generator=g)

    def rotate(x, frame, row=0, col=0):
        ang = rope.angles(torch.tensor([[frame]]), row + 1, col + 1)[:, -1:]  # the token at (row, col)
        cos, sin = torch.cos(ang).float()[:, :, None], torch.sin(ang).float()[:, :, None]
        return RotaryEmbedding.apply(x, cos, sin)

    for d in (0, 1, 3, 17):
        far = (rotate(q, base + d, 1, 2) * rotate(k, base, 0, 1)).sum()
        near = (rotate(q, d, 1, 2) * rotate(k, 0, 0, 1)).sum()
        assert abs(float(far) - float(near)) <= 1e-5
    # and it does depend on the difference
    assert abs(float((rotate(q, 3) * rotate(k, 0)).sum()) - float((rotate(q, 0) * rotate(k, 0)).sum())) > 1e-3


@torch.no_grad()
def test_model_output_is_invariant_to_an_absolute_frame_shift():
    model = random_model()
    x, text = inputs(4)
    t = torch.tensor([500.0, 200.0])
    at0 = model(x, t, text)
    far = model(x, t, text, frames=torch.arange(5000, 5004))
    assert (far - at0).abs().max() <= 1e-4
    # a causal cache starting far away works the same
    spec = block_causal(2, window=4)
    cache = model.new_cache(spec)
    a = model(x[:, :, :2], t, text, attention=spec, cache=cache, frames=torch.arange(5000, 5002), write_frames=2)
    b = model(x[:, :, 2:], t, text, attention=spec, cache=cache)
    assert cache.next_frame == 5002  # b read the cache and wrote nothing
    assert (torch.cat([a, b], 2) - model(x, t, text, attention=spec)).abs().max() <= 1e-4


# -- errors -------------------------------------------------------------------------------------


def test_error_messages_for_bad_inputs():
    model = random_model()
    x, text = inputs(4)
    t = torch.tensor([500.0, 500.0])
    spec = block_causal(2, window=4)
    with pytest.raises(ValueError, match=r"does not fit in_dim=4"):
        model(torch.randn(B, 3, 4, H, W), t, text)
    with pytest.raises(ValueError, match=r"does not fit in_dim=4, patch=\(1, 2, 2\)"):
        model(torch.randn(B, 4, 4, 5, W), t, text)  # odd height
    with pytest.raises(ValueError, match="write_frames > 0 needs a cache"):
        model(x, t, text, attention=spec, write_frames=2)
    with pytest.raises(ValueError, match=r"write_frames must be within \[0, 4\]"):
        model(x, t, text, attention=spec, cache=model.new_cache(spec), write_frames=5)
    with pytest.raises(ValueError, match=r"write_frames must be within"):
        model(x, t, text, attention=spec, cache=model.new_cache(spec), write_frames=-1)
    with pytest.raises(ValueError, match="only meaningful with causal"):
        model(x, t, text, attention=BIDIRECTIONAL, cache=model.new_cache(spec))
    with pytest.raises(ValueError, match="needs causal attention"):
        KVCache(BIDIRECTIONAL, 2)
    with pytest.raises(ValueError, match="needs causal attention"):
        model.new_cache(BIDIRECTIONAL)
    with pytest.raises(ValueError, match=r"timesteps must be \[B\] or \[B, F\]"):
        model(x, torch.zeros(B, 3), text)
    with pytest.raises(ValueError, match=r"timesteps must be"):
        model(x, torch.zeros(3), text)
    with pytest.raises(ValueError, match=r"text states must be \[B, L, 16\]"):
        model(x, t, torch.randn(B, 5, 7))
    with pytest.raises(ValueError, match="more than text_len=8"):
        model(x, t, torch.randn(B, 9, 16))
    with pytest.raises(ValueError, match="does not split into 2 cache groups"):
        model(torch.randn(3, 4, 2, H, W), torch.zeros(3), text[:1], attention=spec, cache=[model.new_cache(spec), model.new_cache(spec)])
    cache = model.new_cache(spec)
    model(x[:, :, :2], t, text, attention=spec, cache=cache, write_frames=2)
    with pytest.raises(ValueError, match="cannot write frame 0 again"):
        model(x[:, :, :2], t, text, attention=spec, cache=cache, frames=torch.arange(2), write_frames=2)


def test_attention_spec_validation():
    with pytest.raises(ValueError, match="block_frames must be >= 1"):
        block_causal(0)
    with pytest.raises(ValueError, match="must hold at least one block"):
        block_causal(3, window=2)
    with pytest.raises(ValueError, match="sink must be >= 0"):
        block_causal(3, sink=-1)
    with pytest.raises(ValueError, match="only apply to causal"):
        AttentionSpec(window=4, block_frames=2)
    assert block_causal(3, window=9, sink=3).cache_frames == 9
    assert block_causal(3).cache_frames is None


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        WanConfig(dim=50, num_heads=3)
    with pytest.raises(ValueError, match="RoPE"):
        WanConfig(dim=8, num_heads=2)  # head_dim 4: no room for three even bands
    with pytest.raises(ValueError, match="unknown model preset 'nope'"):
        M.get_config("nope")
    assert M.rope_split(128) == (44, 42, 42)
    with torch.device("meta"):
        big = WanModel(M.PRESETS["wan2.1-t2v-1.3b"])
    assert 1.40e9 < M.count_parameters(big) < 1.44e9


@torch.no_grad()
def test_bfloat16_model_runs_and_tracks_float32():
    """A bf16 model (Self-Forcing runs the generator in bf16) on CPU, through the cache and the fused call."""
    model = random_model()
    half = random_model().to(torch.bfloat16)
    spec = block_causal(2, window=4)
    x, text = inputs(4)
    t = torch.tensor([[250.0, 250.0, 750.0, 750.0]] * B)
    want = model(x, t, text, attention=spec)
    c = half.new_cache(spec)
    got = half(x, t, text, attention=spec, cache=c, write_frames=2)
    assert got.dtype == torch.bfloat16 and c.k[0].dtype == torch.bfloat16
    assert ((got.float() - want).norm() / want.norm()) < 0.05


def test_cpu_attention_runs_in_float32_under_bfloat16_autocast():
    """Autocast would run SDPA's bfloat16 kernel, whose CPU backward is ~2.5x slower than float32's."""
    from hiar.attention import sdpa

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 24, 16, generator=g).bfloat16().requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sdpa(q, k, v)
    assert out.dtype == torch.bfloat16
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float()).bfloat16()
    assert torch.equal(out, ref)
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16


@torch.no_grad()
def test_sample_prediction_returns_the_velocity_of_the_networks_clean_estimate():
    """prediction="sample": the same weights' raw output (what a velocity model returns) is read as x0,
    and forward returns (x - x0) / max(sigma, MIN_SAMPLE_SIGMA), per frame."""
    cfg = M.get_config("tiny")
    torch.manual_seed(0)
    raw = WanModel(cfg).eval()
    x0_model = WanModel(M.get_config("tiny", prediction="sample")).eval()
    x0_model.load_state_dict(raw.state_dict())
    x = torch.randn(2, cfg.in_dim, 3, 8, 8)
    t = torch.tensor([[800.0, 300.0, 0.0], [1000.0, 20.0, 50.0]])  # 0 and 20 are below the floor
    text = torch.randn(2, cfg.text_len, cfg.text_dim)
    x0 = raw(x, t, text)
    sigma = (t / 1000).clamp_min(M.MIN_SAMPLE_SIGMA)[:, None, :, None, None]
    got = x0_model(x, t, text)
    torch.testing.assert_close(got, (x - x0) / sigma, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(got).all()
    # x - sigma v (the samplers' clean estimate) gives back the network's x0 where sigma is above the floor
    above = (t / 1000 >= M.MIN_SAMPLE_SIGMA)[:, None, :, None, None].expand_as(x)
    est = x - (t / 1000)[:, None, :, None, None] * got
    torch.testing.assert_close(est[above], x0[above], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(est[~above], x0[~above])


def test_prediction_validation():
    with pytest.raises(ValueError, match="prediction must be one of velocity, sample, got 'eps'"):
        M.get_config("tiny", prediction="eps")
    with pytest.raises(ValueError, match="needs out_dim == in_dim"):
        M.get_config("tiny", prediction="sample", out_dim=2)


def test_toy_p2_preset_is_the_architecture_of_the_committed_patch_2_teacher():
    from pathlib import Path

    from hiar.checkpoint import load_model

    path = Path(__file__).resolve().parents[1] / "results/experiments/gpu-sweep-p2/teacher-short-p2-l8.safetensors"
    assert load_model(path).cfg == M.get_config("toy-p2")
    cfg = M.get_config("toy-p2")
    assert cfg.patch_size == (1, 2, 2) and cfg.num_layers == 8
    assert {k: v for k, v in vars(cfg).items() if k not in ("patch_size", "num_layers")} == \
        {k: v for k, v in vars(M.get_config("toy")).items() if k not in ("patch_size", "num_layers")}

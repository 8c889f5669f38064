"""Known-answer tests of the training objectives (losses on tensors and through tiny models)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers import tiny_model
from hiar import schedule
from hiar.training import keys
from hiar.training.objectives import (
    EMA, SigmaSampler, critic_loss, dmd_gradient, dmd_loss, fkl_loss, flow_matching_loss, guided_velocity,
    predict_velocity,
)


def video(seed, B=2, C=4, F=3, H=4, W=4):
    return torch.randn(B, C, F, H, W, generator=torch.Generator().manual_seed(seed))


def test_flow_matching_zero_at_the_true_velocity():
    x0, noise = video(0), video(1)
    assert flow_matching_loss(noise - x0, x0, noise) == 0
    assert flow_matching_loss(torch.zeros_like(x0), x0, noise) == pytest.approx(float(((noise - x0) ** 2).mean()))


def test_dmd_gradient_is_zero_when_fake_equals_real():
    x = video(0).requires_grad_()
    real = video(1)
    loss, grad = dmd_loss(x, real.clone(), real)
    assert loss.item() == 0 and bool((grad == 0).all())
    loss.backward()
    assert bool((x.grad == 0).all())


def test_dmd_gradient_normalisation_known_answer():
    x = torch.ones(2, 1, 1, 2, 2, requires_grad=True)
    real = torch.zeros_like(x)
    fake = torch.full_like(x, 0.5)
    fake[1] = 0.25
    grad = dmd_gradient(x, fake, real)  # per-sample normaliser mean|x - real| = 1
    assert torch.allclose(grad[0], torch.full_like(grad[0], 0.5), atol=0, rtol=0)
    assert torch.allclose(grad[1].float(), torch.full_like(grad[1], 0.25).float())
    loss, _ = dmd_loss(x, fake, real)
    loss.backward()  # d/dx 0.5 mean (x - sg(x - g))^2 = g / numel
    assert torch.allclose(x.grad, (grad / x.numel()).float())
    # a zero normaliser gives 0, not NaN
    assert bool((dmd_gradient(real, fake, real) == 0).all())


def test_dmd_through_models_gives_zero_generator_gradient_when_critic_is_teacher():
    gen, teacher = tiny_model(0), tiny_model(1)
    critic = copy.deepcopy(teacher)
    text = torch.randn(2, 5, 16)
    z = video(3)
    x = gen(z, torch.full((2,), 500.0), text)  # stands in for the rollout's output, with a graph
    sigma = torch.tensor([0.7, 0.3], dtype=torch.float64)
    xt = schedule.add_noise(x.detach(), video(4), sigma)
    with torch.no_grad():
        fake = schedule.x0_from_velocity(xt, predict_velocity(critic, xt, sigma, text), sigma)
        real = schedule.x0_from_velocity(xt, guided_velocity(teacher, xt, sigma, text, torch.zeros_like(text), 1.0), sigma)
    loss, grad = dmd_loss(x, fake, real)
    loss.backward()
    assert loss.item() == 0 and bool((grad == 0).all())
    assert all(p.grad is None or bool((p.grad == 0).all()) for p in gen.parameters())
    # with a different critic the gradient is not zero
    gen.zero_grad()
    other = tiny_model(2)
    x = gen(z, torch.full((2,), 500.0), text)
    with torch.no_grad():
        fake = schedule.x0_from_velocity(xt, predict_velocity(other, xt, sigma, text), sigma)
    dmd_loss(x, fake, real)[0].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())


def test_classifier_free_guidance_scale_one_is_the_conditional_call():
    m = tiny_model(0)
    x, text = video(0), torch.randn(2, 5, 16)
    s = torch.tensor([0.5, 0.9], dtype=torch.float64)
    cond = predict_velocity(m, x, s, text)
    uncond = predict_velocity(m, x, s, torch.zeros_like(text))
    assert torch.equal(guided_velocity(m, x, s, text, torch.zeros_like(text), 1.0), cond)
    assert torch.allclose(guided_velocity(m, x, s, text, torch.zeros_like(text), 3.0), uncond + 3 * (cond - uncond), atol=1e-5)


def test_fkl_is_zero_when_the_student_reproduces_the_trajectory_step():
    student = tiny_model(0)
    text = torch.randn(2, 5, 16)
    levels = schedule.student_levels()
    x_i = video(5)
    s_i = levels[[0, 1]]
    s_n = levels[[1, 2]]
    with torch.no_grad():
        v = predict_velocity(student, x_i, s_i, text)
        x_next = schedule.euler(x_i, v, s_i, s_n)  # the trajectory makes exactly the student's Euler step
        assert float(fkl_loss(predict_velocity(student, x_i, s_i, text), x_i, x_next, s_i, s_n)) < 1e-10
        # and it is the velocity error otherwise
        v2 = v + 0.1
        assert float(fkl_loss(v2, x_i, x_next, s_i, s_n)) == pytest.approx(0.01, rel=1e-3)


def test_critic_loss_is_flow_matching_on_the_same_inputs_and_detaches_the_sample():
    critic = tiny_model(0)
    text = torch.randn(2, 5, 16)
    sample = video(6).requires_grad_()
    noise = video(7)
    sigma = torch.tensor([0.2, 0.8], dtype=torch.float64)
    loss = critic_loss(critic, sample, sigma, noise, text)
    xt = schedule.add_noise(sample.detach(), noise, sigma)
    expected = flow_matching_loss(predict_velocity(critic, xt, sigma, text), sample.detach(), noise)
    assert torch.equal(loss, expected)
    loss.backward()
    assert sample.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())


def test_sigma_sampler_is_keyed_and_in_range():
    s = SigmaSampler("uniform", shift=5.0, min_t=0.02, max_t=0.98)
    draws = [s(0, "x", step) for step in range(200)]
    assert draws == [s(0, "x", step) for step in range(200)]
    lo, hi = schedule.shift_sigma(0.02, 5.0), schedule.shift_sigma(0.98, 5.0)
    assert all(lo <= d <= hi for d in draws)
    assert len(set(draws)) == 200
    ln = SigmaSampler("logit_normal", shift=1.0)
    assert all(0 <= ln(1, i) <= 1 for i in range(50))
    with pytest.raises(ValueError):
        SigmaSampler("gamma")


def test_keyed_draws_do_not_depend_on_order():
    a = keys.randn((3,), 1, "noise", 5, 7)
    keys.randn((3,), 1, "noise", 5, 6)
    assert torch.equal(a, keys.randn((3,), 1, "noise", 5, 7))
    assert not torch.equal(a, keys.randn((3,), 1, "noise", 5, 8))


def test_ema_known_answer():
    m = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = EMA(m, decay=0.9, start=1)
    with torch.no_grad():
        m.weight.fill_(3.0)
    ema.update(m, step=0)  # before start: copies
    assert float(ema.model.weight) == 3.0
    with torch.no_grad():
        m.weight.fill_(13.0)
    ema.update(m, step=1)  # first averaged update: warm-up decay (1 + 0) / (10 + 0) = 0.1
    assert float(ema.model.weight) == pytest.approx(0.1 * 3 + 0.9 * 13)
    assert not ema.model.weight.requires_grad
    assert ema.decay_at(1 + 90) == pytest.approx(0.9)  # (1 + 90) / 100 > 0.9: the configured decay
    assert ema.decay_at(1 + 8) == pytest.approx(9 / 18)


# the released Self-Forcing / HiAR draw: k ~ U{0..999}, t = k / 1000, shift 5, sigma clamped to [0.02, 0.98]
RELEASED = SigmaSampler("discrete", shift=5.0, min_sigma=0.02, max_sigma=0.98)


def released_sigma(k: int) -> float:
    return min(max(float(schedule.shift_sigma(k / 1000, 5.0)), 0.02), 0.98)


def test_discrete_sigma_is_the_released_formula_on_the_keyed_integer():
    for step in range(50):
        k = int(torch.randint(0, 1000, (), generator=keys.generator(3, "dmd-sigma", step, 0)))
        assert RELEASED(3, "dmd-sigma", step, 0) == released_sigma(k)
    assert RELEASED.t_of(torch.Generator().manual_seed(7)) == int(torch.randint(0, 1000, (), generator=torch.Generator().manual_seed(7))) / 1000


def test_discrete_sigma_mass_at_the_clamped_ends():
    # shift 5: sigma >= 0.98 <=> t >= 0.98 / 1.08 = 0.9074, i.e. k = 908..999: 92 of the 1000 timesteps
    at_top = sum(released_sigma(k) == 0.98 for k in range(1000))
    at_bottom = sum(released_sigma(k) == 0.02 for k in range(1000))  # sigma <= 0.02 <=> k <= 4
    assert (at_top, at_bottom) == (92, 5)
    grid = {released_sigma(k) for k in range(1000)}
    draws = [RELEASED(0, "x", i) for i in range(10000)]
    assert all(0.02 <= d <= 0.98 for d in draws)
    assert set(draws) <= grid  # every draw is a point of the shifted, clamped grid
    assert sum(d == 0.98 for d in draws) / len(draws) == pytest.approx(at_top / 1000, abs=0.01)
    assert sum(d == 0.02 for d in draws) / len(draws) == pytest.approx(at_bottom / 1000, abs=0.003)


def test_discrete_sigma_honours_min_t_max_t_and_the_timestep_count():
    s = SigmaSampler("discrete", shift=1.0, min_t=0.5, max_t=0.75, num_train_timesteps=8)  # k in 4..6
    assert {s(0, i) for i in range(200)} == {0.5, 0.625, 0.75}
    with pytest.raises(ValueError, match="num_train_timesteps"):
        SigmaSampler("discrete", min_t=0.3, max_t=0.4, num_train_timesteps=2)  # no k / 2 in [0.3, 0.4]


def test_sigma_clamp_applies_to_every_kind_and_the_default_changes_nothing():
    for kind in ("uniform", "logit_normal"):
        plain = SigmaSampler(kind, shift=3.0)
        clamped = SigmaSampler(kind, shift=3.0, min_sigma=0.3, max_sigma=0.6)
        for i in range(100):
            sigma = float(schedule.shift_sigma(plain.t_of(keys.generator(1, i)), 3.0))
            assert plain(1, i) == sigma
            assert clamped(1, i) == min(max(sigma, 0.3), 0.6)


@pytest.mark.parametrize("kw, field", [
    ({"min_sigma": -0.1}, "min_sigma"), ({"min_sigma": 1.0}, "min_sigma"), ({"max_sigma": 0.0}, "max_sigma"),
    ({"max_sigma": 1.5}, "max_sigma"), ({"min_sigma": 0.5, "max_sigma": 0.5}, "min_sigma"),
    ({"num_train_timesteps": 0}, "num_train_timesteps"), ({"kind": "gamma"}, "discrete"),
])
def test_sigma_sampler_validation_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        SigmaSampler(**kw)


def test_score_noise_section_parses_from_yaml(tmp_path):
    from hiar.config import ConfigError
    from hiar.training import load_stage_config

    path = tmp_path / "dmd.yaml"
    path.write_text("stage: dmd\nscore_noise: {kind: discrete, shift: 5.0, min_sigma: 0.02, max_sigma: 0.98}\n")
    assert load_stage_config(path).score_noise == RELEASED
    default = load_stage_config(path, {"score_noise": {}}).score_noise
    assert default == SigmaSampler() and default.num_train_timesteps == 1000
    with pytest.raises(ConfigError, match=r"score_noise.*max_sigma"):
        load_stage_config(path, {"score_noise.max_sigma": 2.0})
    path.write_text("stage: teacher\nnoise: {kind: discrete, num_train_timesteps: 100, min_sigma: 0.1}\n")
    assert load_stage_config(path).noise == SigmaSampler("discrete", num_train_timesteps=100, min_sigma=0.1)

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

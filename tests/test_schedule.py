"""Schedule math: known answers and identities (paper Eq. 1-3)."""

import pytest
import torch

from hiar import schedule as S


def test_shift_known_values():
    assert S.shift_sigma(0.0) == 0.0
    assert S.shift_sigma(1.0) == 1.0
    assert S.shift_sigma(0.5, shift=1.0) == 0.5
    assert S.shift_sigma(0.5) == pytest.approx(2.5 / 3)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    s = S.shift_sigma(t)
    assert bool((s[1:] > s[:-1]).all())  # monotone
    assert bool((s >= t).all())  # a shift > 1 moves every level up


def test_student_levels_known_answer():
    levels = S.student_levels()
    assert levels.dtype == torch.float64
    expected = torch.tensor([1.0, 0.9375, 5 / 6, 0.625, 0.0], dtype=torch.float64)
    torch.testing.assert_close(levels, expected, rtol=0, atol=1e-15)
    assert S.timestep(levels).tolist() == pytest.approx([1000.0, 937.5, 833.3333333, 625.0, 0.0])


def test_student_levels_other_shift():
    torch.testing.assert_close(S.student_levels(shift=1.0), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    torch.testing.assert_close(S.student_levels([1000, 500]), torch.tensor([1.0, 5 / 6, 0.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "timesteps, match",
    [([], "at least one"), ([1000, 1000, 500], "strictly decreasing"), ([500, 750], "strictly decreasing"),
     ([1001, 500], "must lie in"), ([1000, 0], "must lie in"), ([1000, -250], "must lie in")],
)
def test_bad_schedules_refused(timesteps, match):
    with pytest.raises(ValueError, match=match):
        S.student_levels(timesteps)


@pytest.mark.parametrize("steps", [4, 10, 48, 50, 98, 196, 1000])
def test_fine_grid_contains_student_levels_exactly(steps):
    student = S.student_levels()
    grid = S.uniform_levels(steps, include=student)
    assert grid[0] == 1.0 and grid[-1] == 0.0
    assert bool((grid[1:] < grid[:-1]).all()), "strictly decreasing"
    for level in student.tolist():
        assert level in grid.tolist(), f"{level} missing from the {steps}-step grid"
    # no near-duplicate level (a zero-length step would be a wasted model call)
    assert float((grid[:-1] - grid[1:]).min()) > 1e-9
    plain = S.uniform_levels(steps)
    assert len(plain) == steps + 1
    assert len(plain) <= len(grid) <= steps + 1 + 3


def test_fine_grid_without_include_is_the_shifted_linspace():
    torch.testing.assert_close(S.uniform_levels(4, shift=1.0), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="at least one step"):
        S.uniform_levels(0)


def _video(seed=0, shape=(2, 3, 4, 5, 6)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


def test_add_noise_endpoints_and_value():
    x0, eps = _video()
    torch.testing.assert_close(S.add_noise(x0, eps, 0.0), x0)
    torch.testing.assert_close(S.add_noise(x0, eps, 1.0), eps)
    torch.testing.assert_close(S.add_noise(x0, eps, 0.25), 0.75 * x0 + 0.25 * eps)


def test_velocity_x0_euler_renoise_identities():
    x0, eps = _video(1)
    v = S.velocity_target(x0, eps)
    torch.testing.assert_close(v, eps - x0)
    for s, s_next in [(1.0, 0.9375), (0.9375, 5 / 6), (0.625, 0.0), (0.3, 0.3)]:
        xt = S.add_noise(x0, eps, s)
        torch.testing.assert_close(S.x0_from_velocity(xt, v, s), x0)  # exact for the linear path
        # one Euler step with the true velocity lands exactly on the path at the next level
        torch.testing.assert_close(S.euler(xt, v, s, s_next), S.add_noise(x0, eps, s_next))
        # renoise with the same noise and a perfect x0 is the same point
        torch.testing.assert_close(S.renoise(x0, eps, s_next), S.add_noise(x0, eps, s_next))
    # with fresh noise, renoise differs from euler: it is a new point at the same level
    other = torch.randn_like(eps)
    torch.testing.assert_close(S.renoise(x0, other, 0.5), 0.5 * x0 + 0.5 * other)


def test_sigma_broadcasting_per_sample_and_per_frame():
    x0, eps = _video(2)  # [B=2, C, F=4, H, W]
    per_sample = torch.tensor([0.2, 0.7])
    out = S.add_noise(x0, eps, per_sample)
    for b in range(2):
        torch.testing.assert_close(out[b], S.add_noise(x0[b], eps[b], float(per_sample[b])))
    per_frame = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.5, 0.25]])
    out = S.add_noise(x0, eps, per_frame)
    for b in range(2):
        for f in range(4):
            torch.testing.assert_close(out[b, :, f], S.add_noise(x0[b, :, f], eps[b, :, f], float(per_frame[b, f])))
    v = S.velocity_target(x0, eps)
    torch.testing.assert_close(S.x0_from_velocity(out, v, per_frame), x0)
    torch.testing.assert_close(S.add_noise(x0, eps, torch.tensor(0.5)), S.add_noise(x0, eps, 0.5))
    with pytest.raises(ValueError, match="sigma must be"):
        S.add_noise(x0, eps, torch.zeros(2, 4, 1))

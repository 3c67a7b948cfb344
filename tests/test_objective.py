"""Assimilation A and token-wise similarity S: hand-computed cases, masks, batching, dtypes, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from amdet_audit.scan.objective import assimilation, tokenwise_similarity


def _brute_assimilation(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """O(B T^2) reference: average cosine over selected pairs i != j, 0 when fewer than 2 are selected."""
    out = []
    for x, m in zip(states.double(), mask.bool(), strict=True):
        sel = x[m]
        if len(sel) < 2:
            out.append(0.0)
            continue
        cos = torch.nn.functional.cosine_similarity(sel[:, None], sel[None, :], dim=-1)
        k = len(sel)
        out.append(float((cos.sum() - cos.diagonal().sum()) / (k * (k - 1))))
    return torch.tensor(out, dtype=torch.float64)


def test_identical_tokens_score_one() -> None:
    v = torch.randn(16)
    states = torch.stack([v * s for s in (0.5, 1.0, 3.0, 10.0)])[None]  # [1, 4, 16] same direction
    assert assimilation(states).item() == pytest.approx(1.0, abs=1e-6)
    assert tokenwise_similarity(states, 2 * states).item() == pytest.approx(1.0, abs=1e-6)


def test_orthogonal_tokens_score_zero() -> None:
    states = torch.eye(6)[None, :5]  # [1, 5, 6] five orthonormal tokens
    assert assimilation(states).item() == pytest.approx(0.0, abs=1e-7)
    u, y = torch.eye(4)[None, :2], torch.eye(4)[None, 2:]  # token t of u orthogonal to token t of y
    assert tokenwise_similarity(u, y).item() == pytest.approx(0.0, abs=1e-7)
    assert tokenwise_similarity(u, -u).item() == pytest.approx(-1.0, abs=1e-6)


def test_hand_computed_small_case_excludes_diagonal() -> None:
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    diag45 = torch.tensor([1.0, 1.0])
    states = torch.stack([e1, e1, e2])[None]  # pairs: (1,2)=1, (1,3)=0, (2,3)=0
    assert assimilation(states).item() == pytest.approx(1 / 3, abs=1e-6)  # reference (diag incl.): 5/9
    states = torch.stack([e1, diag45])[None]
    assert assimilation(states).item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    u = torch.stack([e1, e1])[None]
    y = torch.stack([e1, diag45])[None]
    assert tokenwise_similarity(u, y).item() == pytest.approx((1 + 1 / math.sqrt(2)) / 2, abs=1e-6)


def test_matches_brute_force_with_random_masks() -> None:
    g = torch.Generator().manual_seed(0)
    states = torch.randn(7, 11, 5, generator=g) + 0.5  # a shared offset, so cosines are not all ~0
    mask = (torch.rand(7, 11, generator=g) < 0.6).long()
    mask[0] = 1
    mask[1] = 0
    mask[2] = 0
    mask[2, 3] = 1  # a single selected position
    got = assimilation(states, mask)
    assert torch.allclose(got.double(), _brute_assimilation(states, mask), atol=1e-5)
    assert torch.allclose(assimilation(states), _brute_assimilation(states, torch.ones(7, 11)).float(), atol=1e-5)


def test_mask_respected() -> None:
    g = torch.Generator().manual_seed(1)
    states = torch.randn(2, 9, 8, generator=g)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[:, :4] = True
    garbage = states.clone()
    garbage[:, 4:] = 1e3 * torch.randn(2, 5, 8, generator=g)
    assert torch.allclose(assimilation(states, mask), assimilation(garbage, mask))
    assert torch.allclose(assimilation(states, mask), assimilation(states[:, :4]))
    y = torch.randn(2, 9, 8, generator=g)
    assert torch.allclose(tokenwise_similarity(states, y, mask), tokenwise_similarity(garbage, y, mask))
    assert torch.allclose(tokenwise_similarity(states, y, mask), tokenwise_similarity(states[:, :4], y[:, :4]))
    assert torch.allclose(assimilation(states, mask.float() * 7), assimilation(states, mask))  # nonzero = selected


def test_fewer_than_two_positions_is_zero_not_nan() -> None:
    states = torch.randn(3, 4, 6)
    mask = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]])
    a = assimilation(states, mask)
    assert torch.isfinite(a).all() and a[0] == 0 and a[1] == 0 and a[2] != 0
    s = tokenwise_similarity(states, states, mask)
    assert s[0] == 0 and s[1] == pytest.approx(1.0) and s[2] == pytest.approx(1.0)
    assert assimilation(torch.randn(2, 1, 4)).eq(0).all()
    assert torch.isfinite(assimilation(torch.zeros(1, 3, 4))).all()  # all-zero vectors: no NaN


def test_batch_independence() -> None:
    g = torch.Generator().manual_seed(2)
    states, y = torch.randn(4, 6, 8, generator=g), torch.randn(4, 6, 8, generator=g)
    a, s = assimilation(states), tokenwise_similarity(states, y)
    assert a.shape == s.shape == (4,)
    for b in range(4):
        assert torch.allclose(a[b], assimilation(states[b : b + 1])[0], atol=1e-6)
        assert torch.allclose(s[b], tokenwise_similarity(states[b : b + 1], y[b : b + 1])[0], atol=1e-6)
    changed = states.clone()
    changed[1] = torch.randn(6, 8, generator=g)
    a2 = assimilation(changed)
    assert torch.equal(a2[[0, 2, 3]], a[[0, 2, 3]]) and a2[1] != a[1]


def test_low_precision_input_accumulates_in_float32() -> None:
    states = torch.randn(2, 77, 64)
    a = assimilation(states.bfloat16())
    assert a.dtype == torch.float32
    assert torch.allclose(a, assimilation(states), atol=2e-2)
    assert tokenwise_similarity(states.bfloat16(), states.half()).dtype == torch.float32
    assert assimilation(states.double()).dtype == torch.float64


def test_gradients_flow() -> None:
    g = torch.Generator().manual_seed(3)
    states = torch.randn(2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.autograd.gradcheck(lambda x: assimilation(x, mask), (states,))
    assert torch.autograd.gradcheck(lambda a, b: tokenwise_similarity(a, b, mask), (states, y))
    x = torch.randn(3, 7, 6, requires_grad=True)
    (assimilation(x).sum() - tokenwise_similarity(x, x.detach().flip(1)).sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError):
        assimilation(torch.randn(5, 4))
    with pytest.raises(ValueError):
        assimilation(torch.randn(2, 5, 4), torch.ones(2, 4))
    with pytest.raises(ValueError):
        tokenwise_similarity(torch.randn(2, 5, 4), torch.randn(2, 5, 3))

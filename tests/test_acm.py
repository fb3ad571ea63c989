"""Eq. 8–9 against values computed by hand on 2-d vectors (θ = identity, its initial value)."""

import math

import pytest
import torch

from llamafactory_attok.acm import ACMProjection, acm_loss

# book 0 = {(1,0), (0,1), (1,1)}, book 1 = {(-1,0), (0,-1), (1,-1)}; entries are (a_k, e_ind(k), f̃_k)
BOOKS = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0], [1.0, -1.0]]])
ALL_VALID = torch.ones(2, 3, dtype=torch.bool)
# by hand, s = cos: anchor (1,0) of class 0 -> book 0: 1, 0, 1/√2; book 1: -1, 0, 1/√2
#   L = -log((e^1 + e^0 + e^.7071) / (e^1 + e^0 + e^.7071 + e^-1 + e^0 + e^.7071)) = 0.464348957...
L_ANCHOR_0 = 0.4643489574404603
# anchor (0,-1) of class 1 -> book 0: 0, -1, -1/√2; book 1: 0, 1, 1/√2  =>  0.280541203...
L_ANCHOR_1 = 0.28054120374873853


def theta() -> ACMProjection:
    return ACMProjection(2)


def test_theta_starts_as_identity():
    x = torch.randn(3, 2)
    assert torch.equal(theta()(x), x)


def test_single_anchor_matches_hand_value():
    loss = acm_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), BOOKS, ALL_VALID, theta(), tau=1.0)
    assert loss.item() == pytest.approx(L_ANCHOR_0, abs=1e-6)


def test_multi_label_sample_averages_each_occurrence():
    anchors = torch.tensor([[1.0, 0.0], [0.0, -1.0]])  # one answer carrying attribute 0 then attribute 1
    loss = acm_loss(anchors, torch.tensor([0, 1]), BOOKS, ALL_VALID, theta(), tau=1.0)
    assert loss.item() == pytest.approx((L_ANCHOR_0 + L_ANCHOR_1) / 2, abs=1e-6)


def test_unseen_prototype_is_neither_positive_nor_negative():
    valid = ALL_VALID.clone()
    valid[1, 2] = False  # book 1's prototype not seen yet: drop e^{0.7071} from the denominator
    expected = -math.log((math.e + 1 + math.exp(2**-0.5)) / (math.e + 1 + math.exp(2**-0.5) + math.exp(-1) + 1))
    loss = acm_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), BOOKS, valid, theta(), tau=1.0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.2135304881660885)


def test_temperature_divides_similarities():
    loss = acm_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), BOOKS, ALL_VALID, theta(), tau=0.5)
    assert loss.item() == pytest.approx(0.3505226305478292, abs=1e-6)


def test_scale_invariance_of_cosine():
    loss = acm_loss(torch.tensor([[7.0, 0.0]]), torch.tensor([0]), BOOKS * 3, ALL_VALID, theta(), tau=1.0)
    assert loss.item() == pytest.approx(L_ANCHOR_0, abs=1e-6)


def test_no_anchor_gives_zero_that_still_reaches_theta_and_books():
    books = BOOKS.clone().requires_grad_(True)
    proj = theta()
    loss = acm_loss(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), books, ALL_VALID, proj, tau=1.0)
    assert loss.item() == 0.0
    loss.backward()
    assert proj.attok_theta.weight.grad is not None and books.grad is not None


def test_gradients_reach_anchor_theta_and_books():
    anchors = torch.tensor([[1.0, 0.2]], requires_grad=True)
    books = BOOKS.clone().requires_grad_(True)
    proj = theta()
    acm_loss(anchors, torch.tensor([0]), books, ALL_VALID, proj, tau=1.0).backward()
    for grad in (anchors.grad, books.grad, proj.attok_theta.weight.grad):
        assert grad is not None and grad.abs().sum() > 0

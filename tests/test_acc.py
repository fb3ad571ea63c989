"""Eq. 6–7 against a direct float64 formula; masking of non-image rows and unseen prototypes."""

import math

import numpy as np
import torch

from llamafactory_attok.acc import ACCAdapter


def direct_formula(visual, books, valid, adapter, gamma):
    """F̂_i = F_i + γ Σ_j softmax_j((F_i W_Q)·(B_j W_K)/√d) (B_j W_V) W_O, term by term in float64."""
    wq, wk, wv, wo = (layer.weight.detach().double().numpy().T for layer in
                      (adapter.attok_q, adapter.attok_k, adapter.attok_v, adapter.attok_o))
    entries = books.reshape(-1, books.shape[-1]).double().numpy()
    ok = valid.reshape(-1).numpy()
    out = []
    for f in visual.double().numpy():
        q = f @ wq
        scores = np.array([q @ (b @ wk) / math.sqrt(len(f)) if ok[j] else -np.inf for j, b in enumerate(entries)])
        weights = np.exp(scores - scores.max())
        weights /= weights.sum()
        attended = sum(w * (b @ wv) for w, b in zip(weights, entries, strict=True))
        out.append(f + gamma * attended @ wo)
    return np.stack(out)


def make(dim=6, k=3, n=5, gamma=0.1):
    gen = torch.Generator().manual_seed(0)
    adapter = ACCAdapter(dim, gamma, gen)
    visual = torch.randn(n, dim, generator=gen)
    books = torch.randn(k, 3, dim, generator=gen)
    return adapter, visual, books


def test_matches_direct_formula():
    adapter, visual, books = make()
    valid = torch.ones(3, 3, dtype=torch.bool)
    out, weights = adapter(visual, books, valid)
    expected = direct_formula(visual, books, valid, adapter, 0.1)
    np.testing.assert_allclose(out.detach().double().numpy(), expected, atol=1e-5)
    assert weights.shape == (5, 9)
    torch.testing.assert_close(weights.sum(-1), torch.ones(5))


def test_gamma_scales_the_residual():
    adapter, visual, books = make(gamma=0.0)
    out, _ = adapter(visual, books, torch.ones(3, 3, dtype=torch.bool))
    assert torch.equal(out, visual)


def test_unseen_prototypes_get_no_attention():
    adapter, visual, books = make()
    valid = torch.ones(3, 3, dtype=torch.bool)
    valid[:, 2] = False
    out, weights = adapter(visual, books, valid)
    assert torch.all(weights.reshape(5, 3, 3)[:, :, 2] == 0)
    expected = direct_formula(visual, books, valid, adapter, 0.1)
    np.testing.assert_allclose(out.detach().double().numpy(), expected, atol=1e-5)


def test_only_masked_rows_change_bit_for_bit():
    adapter, visual, books = make()
    mask = torch.tensor([True, False, True, False, False])
    out, _ = adapter(visual, books, torch.ones(3, 3, dtype=torch.bool), mask)
    assert torch.equal(out[~mask], visual[~mask])
    assert not torch.equal(out[mask], visual[mask])


def test_bf16_input_returns_bf16_and_untouched_rows_stay_exact():
    adapter, visual, books = make()
    visual = visual.bfloat16()
    mask = torch.tensor([False, True, False, False, False])
    out, _ = adapter(visual, books, torch.ones(3, 3, dtype=torch.bool), mask)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[~mask], visual[~mask])


def test_all_four_projections_receive_gradient():
    adapter, visual, books = make()
    out, _ = adapter(visual, books, torch.ones(3, 3, dtype=torch.bool))
    out.sum().backward()
    for layer in (adapter.attok_q, adapter.attok_k, adapter.attok_v, adapter.attok_o):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_inference_reuses_book_projections_until_books_change():
    adapter, visual, books = make()
    adapter.eval()
    calls = []
    adapter.attok_k.register_forward_hook(lambda *args: calls.append(1))
    valid = torch.ones(3, 3, dtype=torch.bool)
    with torch.no_grad():
        first, _ = adapter(visual, books, valid)
        second, _ = adapter(visual * 2, books, valid)
        assert len(calls) == 1  # keys/values of the unchanged books computed once
        expected = direct_formula(visual * 2, books, valid, adapter, 0.1)
        np.testing.assert_allclose(second.double().numpy(), expected, atol=1e-5)
        adapter(visual, books + 1, valid)
        assert len(calls) == 2  # new books: projected again
    adapter.train()
    adapter.absorb_books = False  # 5 tokens < 9 entries would take the order that never projects the books
    out, _ = adapter(visual, books, valid)
    adapter(visual, books, valid)
    assert len(calls) == 4  # training: every forward


def test_both_multiplication_orders_match_the_formula_and_each_other_with_gradients():
    """N < 3K takes the absorbed order ((Q W_K) Bᵀ, (A B) W_V), N ≥ 3K projects the books; both are Eq. 6–7."""
    results = {}
    for absorb in (True, False):
        adapter, visual, books = make(n=5, k=3)  # 5 tokens, 9 entries
        adapter.double()
        adapter.absorb_books = absorb
        books = books.double().requires_grad_(True)
        valid = torch.ones(3, 3, dtype=torch.bool)
        valid[1, 2] = False
        out, weights = adapter(visual.double(), books, valid)
        np.testing.assert_allclose(out.detach().numpy(), direct_formula(visual, books.detach(), valid, adapter, 0.1),
                                   atol=1e-12)
        out.square().sum().backward()
        results[absorb] = (out.detach(), weights, books.grad,
                           [layer.weight.grad for layer in (adapter.attok_q, adapter.attok_k, adapter.attok_v)])
    for a, b in zip(results[True][:3], results[False][:3], strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    for a, b in zip(results[True][3], results[False][3], strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_the_cheaper_order_is_chosen_per_forward():
    adapter, _, _ = make()
    assert adapter._absorbs(num_tokens=64, num_entries=3000)  # 224² image, K = 1000
    assert not adapter._absorbs(num_tokens=64, num_entries=21)  # K = 7
    adapter.eval()
    with torch.no_grad():
        assert not adapter._absorbs(num_tokens=64, num_entries=3000)  # serving: cached book projections

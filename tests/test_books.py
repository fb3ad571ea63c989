"""Eq. 5: EMA prototypes — token-weighted means, first sighting, momentum, absent classes, all-reduce across 2 gloo
ranks; the two keyword entries of a book at step 0."""

import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llamafactory_attok.books import AttributeBooks, PrototypeBank, all_reduce_sums
from llamafactory_attok.plan import BatchPlan, image_means
from llamafactory_attok.trainer import update_prototypes


def test_class_sums_multi_label_token_weighted():
    token_sums = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    sums, counts = PrototypeBank.class_sums(token_sums, labels, torch.tensor([1, 3, 2]))
    assert torch.equal(sums, torch.tensor([[1.0, 2.0], [4.0, 6.0], [0.0, 0.0]]))
    assert torch.equal(counts, torch.tensor([4.0, 5.0, 0.0]))  # tokens, not images


def _two_sizes_plan(visual: torch.Tensor) -> BatchPlan:
    """Image A (4 tokens, class 0), image B (16 tokens, classes 0 and 1), LF's dummy image (4 tokens, mask 0)."""
    sizes = [4, 16, 4]
    plan = BatchPlan(token_mask=None, image_sizes=sizes, image_real=torch.tensor([True, True, False]),
                     image_labels=torch.tensor([[1, 0], [1, 1], [1, 1]]), anchor_batch=torch.zeros(0),
                     anchor_pos=torch.zeros(0), anchor_classes=torch.zeros(0))
    plan.image_means = image_means(visual, sizes)
    return plan


def _two_sizes_visual(dtype=torch.float32) -> torch.Tensor:
    a = torch.tensor([[1.0, 0.0], [3.0, 0.0], [5.0, 0.0], [7.0, 0.0]])  # mean (4, 0), sum (16, 0)
    b = torch.stack([torch.zeros(16), torch.arange(16.0)], 1)  # mean (0, 7.5), sum (0, 120)
    dummy = torch.full((4, 2), 1000.0)  # must never reach a prototype
    return torch.cat([a, b, dummy]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prototype_update_is_token_weighted_over_images_of_different_sizes(dtype):
    """Eq. 5 by hand, μ = 0.9, f̃_0 = (10, −10) seen before, class 1 first seen:
    class 0 pools A's 4 and B's 16 tokens: (16 + 0, 0 + 120) / 20 = (0.8, 6.0)
        → 0.9·(10, −10) + 0.1·(0.8, 6.0) = (9.08, −8.4)
    (the mean of per-image means, ((4, 0) + (0, 7.5)) / 2 = (2, 3.75), would give (9.2, −8.625));
    class 1 is B alone, first sighting: (0, 7.5). The values are exact in bf16 too (fp32 accumulation)."""
    bank = PrototypeBank(2, 2, momentum=0.9)
    bank.prototypes[0] = torch.tensor([10.0, -10.0])
    bank.seen[0] = True
    plan = _two_sizes_plan(_two_sizes_visual(dtype))
    assert plan.image_means.dtype == torch.float32
    torch.testing.assert_close(plan.image_token_sums()[:2], torch.tensor([[16.0, 0.0], [0.0, 120.0]]))
    update_prototypes(SimpleNamespace(books=SimpleNamespace(bank=bank)), plan, torch.device("cpu"))
    torch.testing.assert_close(bank.prototypes, torch.tensor([[9.08, -8.4], [0.0, 7.5]]))
    assert bank.seen.tolist() == [True, True]
    per_image_mean = 0.9 * torch.tensor([10.0, -10.0]) + 0.1 * torch.tensor([2.0, 3.75])
    torch.testing.assert_close(per_image_mean, torch.tensor([9.2, -8.625]))
    assert (bank.prototypes[0] - per_image_mean).abs().min() > 0.1


def test_equal_token_counts_give_the_per_image_mean():
    """With every image the same size, token-weighted = mean of per-image means (the two readings agree)."""
    visual = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    means = image_means(visual, [4, 4, 4])
    labels = torch.tensor([[1], [1], [0]])
    sums, counts = PrototypeBank.class_sums(means * 4, labels, torch.tensor([4, 4, 4]))
    torch.testing.assert_close(sums[0] / counts[0], means[:2].mean(0))
    torch.testing.assert_close(sums[0] / counts[0], visual[:8].mean(0))


def test_first_sighting_then_ema_and_absent_unchanged():
    bank = PrototypeBank(3, 2, momentum=0.9)
    bank.update(torch.tensor([[2.0, 4.0], [0.0, 0.0], [3.0, 3.0]]), torch.tensor([2.0, 0.0, 1.0]))
    assert torch.equal(bank.prototypes, torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]]))
    assert bank.seen.tolist() == [True, False, True]
    bank.update(torch.tensor([[11.0, 12.0], [5.0, 5.0], [0.0, 0.0]]), torch.tensor([1.0, 1.0, 0.0]))
    # class 0: 0.9·(1,2) + 0.1·(11,12) = (2, 3); class 1 first seen: (5, 5); class 2 absent: unchanged
    torch.testing.assert_close(bank.prototypes, torch.tensor([[2.0, 3.0], [5.0, 5.0], [3.0, 3.0]]))
    assert bank.prototypes.dtype == torch.float32


def test_books_validity_and_detached_prototypes():
    books = AttributeBooks(torch.randn(2, 4), momentum=0.99)
    books.bank.update(torch.ones(2, 4), torch.tensor([1.0, 0.0]))
    rows = torch.randn(2, 4, requires_grad=True)
    entries, valid = books(rows)
    assert entries.shape == (2, 3, 4)
    assert valid.tolist() == [[True, True, True], [True, True, False]]
    entries.sum().backward()
    assert rows.grad is not None and books.attok_keyword_embeds.grad is not None
    assert not books.bank.prototypes.requires_grad


def test_state_round_trip():
    bank = PrototypeBank(2, 3, momentum=0.5)
    bank.update(torch.ones(2, 3), torch.tensor([1.0, 0.0]))
    other = PrototypeBank(2, 3, momentum=0.5)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.prototypes, bank.prototypes) and torch.equal(other.seen, bank.seen)
    with pytest.raises(ValueError, match="shape"):
        PrototypeBank(3, 3, 0.5).load_state_dict(bank.state_dict())


def _rank_main(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        bank = PrototypeBank(3, 2, momentum=0.5)
        # rank 0 sees class 0 twice; rank 1 sees class 0 once and class 1 once; class 2 nowhere
        # token sums of images of 1 token each on rank 0; rank 1's class-0 image has 2 tokens of (5, 5)
        sums = [torch.tensor([[1.0, 1.0], [3.0, 3.0]]), torch.tensor([[10.0, 10.0], [7.0, 0.0]])][rank]
        tokens = [torch.tensor([1, 1]), torch.tensor([2, 1])][rank]
        labels = [torch.tensor([[1, 0, 0], [1, 0, 0]]), torch.tensor([[1, 0, 0], [0, 1, 0]])][rank]
        for _ in range(2):
            bank.update(*all_reduce_sums(*PrototypeBank.class_sums(sums, labels, tokens)))
        queue.put((rank, bank.prototypes.tolist(), bank.seen.tolist()))
    finally:
        dist.destroy_process_group()


def test_all_reduce_gives_identical_prototypes_on_two_ranks():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    procs = [ctx.Process(target=_rank_main, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (_, proto0, seen0), (_, proto1, seen1) = results
    assert proto0 == proto1 and seen0 == seen1
    # global class-0 token mean = (1+3+5+5)/4 = 3.5 both steps -> 3.5 (per image: 3); class 1 = (7, 0); class 2 unseen
    assert proto0 == [[3.5, 3.5], [7.0, 0.0], [0.0, 0.0]]
    assert seen0 == [True, True, False]


@pytest.mark.slow
def test_a_k_and_e_ind_start_as_the_same_keyword_mean_and_part_through_ntp(tiny_models, sample_data, tmp_path):
    """§4.1 read literally: a_k (the token's input row) and e_ind(k) ("a learnable embedding of its keyword text")
    both start as the mean of the keyword's token embeddings, so a book holds two equal entries at step 0. Kept on
    purpose (README "Books"): a duplicated key/value in ACC is one entry with +log 2 on its logit, a duplicated
    positive in ACM counts twice; nothing is degenerate. ACC and ACM give two equal entries equal gradients, so
    what parts them is NTP, which reads a_k only: after step 1 the books whose token was in that step's answers
    differ, after a few steps every book does."""
    from conftest import base_args
    from llamafactory.train.tuner import run_exp
    from transformers import AutoModelForImageTextToText, AutoTokenizer, TrainerCallback

    from llamafactory_attok.attach import module_of
    from llamafactory_attok.rows import keyword_token_ids
    from llamafactory_attok.vocab import load_vocab

    class Books(TrainerCallback):
        def __init__(self):
            self.seen = {}

        def _grab(self, key, model):
            module = module_of(model)
            books, _ = module.book_entries(next(module.parameters()).device)
            self.seen[key] = (books[:, 0].detach().float().cpu().clone(), books[:, 1].detach().float().cpu().clone())

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._grab(0, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self._grab(state.global_step, model)

    out = tmp_path / "out"
    probe = Books()
    run_exp(base_args(tiny_models["qwen2_vl"], sample_data, out, attok=True, max_steps=6,
                      attok_vocab=str(sample_data / "retina_vocab.yaml")), callbacks=[probe])
    a_start, e_start = probe.seen[0]
    assert torch.equal(a_start, e_start)
    tokenizer = AutoTokenizer.from_pretrained(out)
    vocab = load_vocab(out / "attok_vocab.yaml")
    token_ids = tokenizer.convert_tokens_to_ids(list(vocab.tokens))
    weight = AutoModelForImageTextToText.from_pretrained(tiny_models["qwen2_vl"]).get_input_embeddings().weight
    keyword_means = torch.stack([weight[ids].float().mean(0)
                                 for ids in keyword_token_ids(tokenizer, vocab, token_ids)]).detach()
    torch.testing.assert_close(e_start, keyword_means)

    def gap(step):
        a, e = probe.seen[step]
        return (a - e).abs().amax(1)

    assert not torch.equal(probe.seen[1][1], e_start)  # e_ind learns (ACC/ACM)
    assert (gap(1) > 1e-4).any()
    assert (gap(6) > 1e-4).all(), gap(6)

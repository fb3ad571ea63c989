"""Eq. 5: EMA prototypes — first sighting, momentum, absent classes, all-reduce across 2 gloo ranks."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llamafactory_attok.books import AttributeBooks, PrototypeBank, all_reduce_sums


def test_class_sums_multi_label():
    means = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    sums, counts = PrototypeBank.class_sums(means, labels)
    assert torch.equal(sums, torch.tensor([[1.0, 2.0], [4.0, 6.0], [0.0, 0.0]]))
    assert torch.equal(counts, torch.tensor([2.0, 2.0, 0.0]))


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
        means = [torch.tensor([[1.0, 1.0], [3.0, 3.0]]), torch.tensor([[5.0, 5.0], [7.0, 0.0]])][rank]
        labels = [torch.tensor([[1, 0, 0], [1, 0, 0]]), torch.tensor([[1, 0, 0], [0, 1, 0]])][rank]
        for _ in range(2):
            bank.update(*all_reduce_sums(*PrototypeBank.class_sums(means, labels)))
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
    # global class-0 mean = (1+3+5)/3 = 3 both steps -> 3; class 1 = (7, 0); class 2 unseen, zeros
    assert proto0 == [[3.0, 3.0], [7.0, 0.0], [0.0, 0.0]]
    assert seen0 == [True, True, False]

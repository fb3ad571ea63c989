"""The bookkeeping of `make bench-science` (BENCHMARKS.md §4), without training: the parity count of what each arm
trained, and the paired per-seed differences of the report."""

import torch
from safetensors.torch import save_file

from bench.science import changed_elements
from bench.science_report import report


def test_changed_elements_counts_per_group_and_new_rows(tmp_path):
    warm, run = tmp_path / "warm", tmp_path / "run"
    warm.mkdir()
    run.mkdir()
    embed, head = torch.randn(4, 3), torch.randn(4, 3)
    layer, tower = torch.randn(3, 3), torch.randn(2, 2)
    save_file({"model.embed_tokens.weight": embed, "lm_head.weight": head, "model.layers.0.mlp.weight": layer,
               "model.norm.weight": torch.ones(3), "visual.blocks.0.weight": tower}, str(warm / "model.safetensors"))
    trained_layer = layer.clone()
    trained_layer[0, :2] += 1.0  # two elements trained
    save_file({"model.embed_tokens.weight": torch.cat([embed, torch.randn(3, 3)]),  # 2 attribute rows + 1 padding
               "lm_head.weight": torch.cat([head, torch.randn(3, 3)]), "model.layers.0.mlp.weight": trained_layer,
               "model.norm.weight": torch.ones(3), "visual.blocks.0.weight": tower}, str(run / "model.safetensors"))
    (run / "attok_vocab.yaml").write_text("<|us_mass|>: mass\n<|us_cyst|>: cyst\n")
    save_file({"param.acc.attok_q.weight": torch.zeros(3, 3), "bank.prototypes": torch.ones(2, 3)},
              str(run / "attok_state.safetensors"))
    groups = changed_elements(warm, run)
    assert groups == {"embed: warm-model rows": [0, 12], "embed: attribute rows (added by AttTok)": [-1, 6],
                      "head: warm-model rows": [0, 12], "head: attribute rows (added by AttTok)": [-1, 6],
                      "LLM layers": [2, 9], "LLM final norm": [0, 3], "vision tower + merger": [0, 4],
                      "AttTok modules (ACC, θ, keyword embeddings)": [-1, 9]}  # EMA prototypes are not parameters


def _entry(arm: str, seed: int, one: float, gen: float) -> dict:
    return {"part": "main", "dataset": "breast", "arm": arm, "seed": seed,
            "test": {"one_forward": {"accuracy": one, "macro_f1": one},
                     "generative": {"accuracy": gen, "macro_f1": gen, "unparseable": 2, "total": 156}}}


def test_report_pairs_seeds_and_keeps_unfavourable_signs():
    results = [{"part": "warm", "dataset": "breast", "arm": "warm start", "seed": 0,
                "majority": {"val": 0.731, "test": 0.731}, "val": {"one_forward": {"accuracy": 0.269}}},
               _entry("vanilla", 1, 0.80, 0.70), _entry("attok", 1, 0.85, 0.60),
               _entry("vanilla", 2, 0.90, 0.75), _entry("attok", 2, 0.85, 0.65)]
    text = report(results)
    assert "majority-class rate: val 0.731, test 0.731" in text
    assert "| vanilla | 0.850 ± 0.071 |" in text and "| 2.0 / 156 | — | 2 |" in text  # no token: —
    # one forward: +0.05 and -0.05 -> mean 0, std 0.071; generative: -0.10 both seeds
    assert "| breast | 0.000 ± 0.071 | +0.050, -0.050 | -0.100 ± 0.000 | -0.100, -0.100 |" in text


def test_arms_get_the_same_recipe_apart_from_attok(tmp_path, monkeypatch):
    """Vanilla and AttTok configs of one seed differ only in the AttTok keys and the answers' dataset; every LLM
    layer trains, embed / head / tower / merger stay frozen (freeze tuning)."""
    import json

    import bench.science as science

    seen = {}
    monkeypatch.setattr(science, "_run_lf", lambda args, out: seen.__setitem__(out.name, args))
    model = tmp_path / "warm"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": 3}}))
    for arm in ("vanilla", "attok"):
        science.train(model, tmp_path / "data", tmp_path / arm, "pneumonia", arm, 2, 5e-4, epochs=3)
    vanilla, attok = seen["vanilla"], seen["attok"]
    differ = {k for k in vanilla.keys() | attok.keys() if vanilla.get(k) != attok.get(k)} - {"output_dir"}
    assert differ == {"dataset", "attok", "attok_vocab", "attok_acc", "attok_acm"}
    assert (vanilla["dataset"], attok["dataset"]) == ("pneumonia_vanilla_open_train", "pneumonia_open_train")
    assert vanilla["finetuning_type"] == "freeze" and vanilla["freeze_trainable_layers"] == 3
    assert vanilla["freeze_vision_tower"] and vanilla["freeze_multi_modal_projector"]
    assert vanilla["seed"] == vanilla["data_seed"] == 2

"""Trainable-parameter parity of the science arms, measured: what changed against the warm model (BENCHMARKS §4)."""

from __future__ import annotations

from pathlib import Path


def changed_elements(warm: Path, run: Path) -> dict[str, list[int]]:
    """Parameter elements that differ from the warm model, per group: [changed, total] (the trainable-parameter
    parity of the arms, measured rather than declared); -1 where there is nothing to compare with (new rows, AttTok
    modules: their total is what AttTok trains). LF pads a resized vocabulary to a multiple of 64 rows; only the K
    attribute rows among the added ones train (the others keep their resize value: `tests/test_rows.py` hashes)."""
    from safetensors import safe_open

    from llamafactory_attok.filenames import VOCAB_FILE_NAME
    from llamafactory_attok.vocab import load_vocab

    groups: dict[str, list[int]] = {}
    attok = (run / "attok_state.safetensors").is_file()
    if attok and not (run / VOCAB_FILE_NAME).is_file():
        raise FileNotFoundError(f"{run}: an AttTok run without {VOCAB_FILE_NAME}")
    attribute_rows = len(load_vocab(run / VOCAB_FILE_NAME)) if attok else 0

    def add(group: str, changed: int, total: int) -> None:
        entry = groups.setdefault(group, [0, 0])
        entry[0] = -1 if changed < 0 else entry[0] + changed
        entry[1] += total

    with safe_open(str(warm / "model.safetensors"), "pt") as before, \
            safe_open(str(run / "model.safetensors"), "pt") as after:
        for key in after.keys():
            new = after.get_tensor(key)
            old = before.get_tensor(key)
            if key.endswith(("embed_tokens.weight", "lm_head.weight")):
                part = "embed" if "embed" in key else "head"
                rows = old.shape[0]
                add(f"{part}: warm-model rows", int((new[:rows] != old).sum()), old.numel())
                if new.shape[0] > rows:  # rows added for the attribute tokens: no warm value to compare with
                    add(f"{part}: attribute rows (added by AttTok)", -1, attribute_rows * new.shape[1])
                continue
            group = "vision tower + merger" if key.startswith(("visual", "model.visual")) else \
                "LLM final norm" if key.endswith("model.norm.weight") else "LLM layers"
            add(group, int((new != old).sum()), old.numel())
    control = run / "matched_control.safetensors"  # bench.science.control.STATE_FILE
    if control.is_file():
        with safe_open(str(control), "pt") as saved:
            for key in saved.keys():
                add("matched control (ACC over K free vectors)", -1, saved.get_tensor(key).numel())
    state = run / "attok_state.safetensors"
    if state.is_file():
        with safe_open(str(state), "pt") as attok:
            for key in attok.keys():
                if key.startswith("param."):
                    tensor = attok.get_tensor(key)
                    add("AttTok modules (ACC, θ, keyword embeddings)", -1, tensor.numel())
    return groups

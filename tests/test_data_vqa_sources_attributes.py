"""Attribute tokens for the three Table 2 datasets: offline from structured fields (`--from-fields`, no LLM) on
SLAKE and VQA-RAD, and the LLM workflow (scripted OpenAI-compatible server) on SLAKE and PathVQA builder output."""

import json

import pytest
from conftest import REPO, run_cli
from scripted_openai import ScriptedServer
from vqa_sources import english_subset, pathvqa_release, slake_release

from llamafactory_attok.cli import main
from llamafactory_attok.data.field_attributes import attributes_from_fields, parse_fields
from llamafactory_attok.data.pathvqa import build_pathvqa
from llamafactory_attok.data.slake import build_slake
from llamafactory_attok.data.vqa_rad import build_vqa_rad
from llamafactory_attok.vocab import load_vocab

VQA_RAD = REPO.parent / "shared" / "data" / "vqa_rad"


@pytest.fixture(scope="module")
def slake_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("slake")
    entries = {"train": english_subset("train", 30, per_image=3), "val": english_subset("val", 4),
               "test": english_subset("test", 6, per_image=2)}
    build_slake(slake_release(root / "src", entries), root / "data")
    return root / "data"


def _fields(out, name, fields, *extra):
    return main(["data", "vqa-attributes", str(out / "slake_train.json"), "--out", str(out), "--name", name,
                 "--from-fields", fields, *extra])


def test_slake_from_fields_is_deterministic_and_offline(slake_out):
    assert _fields(slake_out, "slake_fields_a", "modality,location") == 0
    assert _fields(slake_out, "slake_fields_b", "modality,location") == 0
    first, second = ((slake_out / f"slake_fields_{n}.json").read_bytes() for n in "ab")
    assert first.replace(b"slake_fields_a", b"slake_fields_b") == second
    rows = json.loads(first)
    source = json.loads((slake_out / "slake_train.json").read_text())
    for row, plain in zip(rows, source, strict=True):
        modality = {"CT": "ct", "MRI": "mri", "X-Ray": "xray"}[plain["modality"]]
        token = f"<|{modality}_{plain['location'].lower().replace(' ', '_')}|>"
        assert row["attributes"] == [token]
        assert row["messages"][1]["content"] == f"{token} {plain['messages'][1]['content']}"
    vocab = load_vocab(slake_out / "slake_fields_a_vocab.yaml")
    assert vocab.as_dict()[rows[0]["attributes"][0]] == source[0]["location"].lower().replace("_", " ")
    report = json.loads((slake_out / "slake_fields_a_report.json").read_text())
    assert report["calls"] == 0 and report["samples_with_attributes"] == len(rows) and report["missing_values"] == {}
    assert not (slake_out / "slake_fields_a_llm_cache.json").exists()
    info = json.loads((slake_out / "dataset_info.json").read_text())
    assert "slake_fields_a" in info and (slake_out / rows[0]["images"][0]).is_file()


def test_vqa_attributes_refuses_answers_that_already_carry_tokens(slake_out, capsys):
    """Its own output given back as input would get its tokens twice ("<|mri_abdomen|> <|mri_abdomen|> MRI"):
    refused, naming the samples."""
    assert _fields(slake_out, "slake_once", "modality,location") == 0
    capsys.readouterr()
    assert main(["data", "vqa-attributes", str(slake_out / "slake_once.json"), "--out", str(slake_out), "--name",
                 "slake_twice", "--from-fields", "modality,location"]) == 2
    assert "already carry attribute tokens in their answers" in capsys.readouterr().err
    assert not (slake_out / "slake_twice.json").exists()


def test_vqa_rad_from_fields_uses_default_modality_and_spells_out_codes():
    rows = [{"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": a}],
             "images": [], "qid": str(i), "modality": None, "organ": organ}
            for i, (a, organ) in enumerate([("yes", "ABD"), ("no", "HEAD"), ("x", None)])]
    result = attributes_from_fields(rows, parse_fields("modality,organ"), "rad.json")
    assert [r["attributes"] for r in result.rows] == [["<|rad_abd|>"], ["<|rad_head|>"], []]
    assert result.vocab == {"<|rad_abd|>": "abdomen", "<|rad_head|>": "head"}
    assert result.report["missing_values"] == {"organ": ["2"]}  # listed by id, never silently untagged


@pytest.mark.skipif(not VQA_RAD.is_dir(), reason=f"VQA-RAD release not found at {VQA_RAD}")
def test_vqa_rad_from_fields_on_the_real_release(tmp_path):
    build_vqa_rad(VQA_RAD, tmp_path, "rad")
    result = run_cli(["attok", "data", "vqa-attributes", str(tmp_path / "rad_test.json"), "--out", str(tmp_path),
                      "--name", "rad_fields", "--from-fields", "modality,organ"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert load_vocab(tmp_path / "rad_fields_vocab.yaml").as_dict() == {
        "<|rad_head|>": "head", "<|rad_chest|>": "chest", "<|rad_abd|>": "abdomen"}
    assert "3 attribute tokens, 451/451 samples tagged, 0 LLM calls" in result.stdout


def test_from_fields_bad_input(slake_out, capsys):
    assert _fields(slake_out, "bad1", "modality,organs") == 2
    assert "slake_train.json: field(s) organs in no sample (sample fields: answer_type, base_type, content_type" \
        in capsys.readouterr().err
    assert _fields(slake_out, "bad2", "modality") == 2
    assert "the first field gives the modality part, so at least one concept field must follow" in \
        capsys.readouterr().err
    assert _fields(slake_out, "bad3", "modality,,location") == 2
    assert "expected distinct comma-separated field names" in capsys.readouterr().err
    assert _fields(slake_out, "bad4", "modality,location", "--base-url", "http://127.0.0.1:9/v1") == 2
    assert "--from-fields builds tokens without an LLM; drop --base-url / --model" in capsys.readouterr().err
    assert main(["data", "vqa-attributes", str(slake_out / "slake_train.json"), "--out", str(slake_out),
                 "--name", "bad5"]) == 2
    assert "needs --base-url and --model (the LLM workflow), or --from-fields" in capsys.readouterr().err
    assert not list(slake_out.glob("bad*"))


def test_llm_workflow_on_slake_output(slake_out, tmp_path):
    rows = json.loads((slake_out / "slake_train.json").read_text())
    simple = slake_out / "slake_train_one_word.json"  # the scripted "LLM" splits keyword lists on commas
    simple.write_text(json.dumps([r for r in rows if "," not in r["messages"][1]["content"]]))
    with ScriptedServer() as server:
        result = run_cli(["attok", "data", "vqa-attributes", str(simple), "--out",
                          str(tmp_path), "--name", "slake_llm", "--base-url", server.url, "--model", "scripted",
                          "--min-count", "2"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    vocab = load_vocab(tmp_path / "slake_llm_vocab.yaml")
    assert vocab.tokens and all(t.startswith(("<|ct_", "<|mri_", "<|xray_")) for t in vocab.tokens)
    rows = json.loads((tmp_path / "slake_llm.json").read_text())
    assert (tmp_path / rows[0]["images"][0]).is_file()


def test_llm_workflow_on_pathvqa_output_gives_concept_tokens(tmp_path):
    build_pathvqa(pathvqa_release(tmp_path / "pvqa"), tmp_path / "data")
    with ScriptedServer() as server:
        result = run_cli(["attok", "data", "vqa-attributes", str(tmp_path / "data" / "pathvqa_train.json"),
                          "--out", str(tmp_path / "data"), "--name", "pathvqa_llm", "--base-url", server.url,
                          "--model", "scripted", "--min-count", "1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    vocab = load_vocab(tmp_path / "data" / "pathvqa_llm_vocab.yaml")
    assert vocab.as_dict() == {"<|yes|>": "yes", "<|necrosis|>": "necrosis", "<|no|>": "no"}  # no modality part

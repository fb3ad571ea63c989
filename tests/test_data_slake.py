"""`attok data slake` on the real SLAKE 1.0 question files (stand-in images at the `img_name` paths): official
counts per language, kept fields, both validation file names, and every bad-input case with its error text."""

import json

import pytest
from conftest import run_cli
from vqa_sources import english_subset, slake_entries, slake_release

from llamafactory_attok.cli import main
from llamafactory_attok.data.field_attributes import attributes_from_fields
from llamafactory_attok.data.slake import build_slake
from llamafactory_attok.errors import AttTokError


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return slake_release(tmp_path_factory.mktemp("slake") / "Slake1.0")


def _rows(out, name):
    return json.loads((out / f"{name}.json").read_text(encoding="utf-8"))


def test_english_official_counts_and_fields(release, tmp_path):
    build = build_slake(release, tmp_path, "slake")
    counts = {split: c["questions"] for split, c in build.summary()["splits"].items()}
    # the official 4919 / 1053 / 1061, less train qid 1622, whose answer is empty (skipped, listed, not an error)
    assert counts == {"train": 4918, "val": 1053, "test": 1061}
    closed = {split: c["closed"] for split, c in build.summary()["splits"].items()}
    assert closed == {"train": 1943, "val": 422, "test": 416}  # qid 1622 is marked OPEN upstream
    assert [(s.split, s.qid, s.kind) for s in build.skipped] == [("train", "1622", "answer")]
    train = _rows(tmp_path, "slake_train")
    first = train[0]
    assert first["messages"] == [{"role": "user", "content": "<image>What modality is used to take this image?"},
                                 {"role": "assistant", "content": "MRI"}]
    assert {k: first[k] for k in ("qid", "answer_type", "content_type", "modality", "location", "lang")} == {
        "qid": "0", "answer_type": "open", "content_type": "Modality", "modality": "MRI", "location": "Abdomen",
        "lang": "en"}
    assert {r["answer_type"] for r in train} == {"open", "closed"} and all(r["lang"] == "en" for r in train)
    assert (tmp_path / first["images"][0]).read_bytes() == (release / "imgs" / "xmlab1" / "source.jpg").read_bytes()
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert {"slake_train", "slake_val", "slake_test"} <= set(info)
    assert info["slake_val"]["file_name"] == "slake_val.json"
    report = json.loads((tmp_path / "slake_build_report.json").read_text())
    assert report["lang"] == "en" and report["skipped"] == 1 and report["splits"]["test"]["open"] == 645
    tagged = attributes_from_fields(train, ["modality", "location"], "slake_train.json")
    assert len(tagged.vocab) == 14 and tagged.report["samples_with_attributes"] == 4918
    assert tagged.vocab["<|xray_lung|>"] == "lung" and tagged.vocab["<|ct_brain_tissue|>"] == "brain tissue"


def test_chinese_and_all_languages(release, tmp_path):
    zh = build_slake(release, tmp_path, "slake_zh", lang="zh").summary()["splits"]
    both = build_slake(release, tmp_path, "slake_all", lang="all").summary()["splits"]
    assert [zh[s]["questions"] for s in ("train", "val", "test")] == [4916, 1046, 1033]
    assert [both[s]["questions"] for s in ("train", "val", "test")] == [9834, 2099, 2094]  # less qid 1622 (empty)
    assert _rows(tmp_path, "slake_zh_train")[0]["lang"] == "zh"


def test_validation_json_is_accepted(tmp_path):
    entries = {"train": english_subset("train", 3), "val": english_subset("val", 2), "test": english_subset("test", 2)}
    source = slake_release(tmp_path / "src", entries, val_name="validation.json")
    build = build_slake(source, tmp_path / "out")
    assert len(build.rows["val"]) == 2 and not (source / "validate.json").exists()


def test_missing_image_is_reported_by_qid_skipped_and_counted(tmp_path):
    entries = {"train": english_subset("train", 6, per_image=2), "val": english_subset("val", 2),
               "test": english_subset("test", 2)}
    source = slake_release(tmp_path / "src", entries)
    lost = entries["train"][2]
    (source / "imgs" / lost["img_name"]).unlink()
    gone = [e["qid"] for e in entries["train"] if e["img_name"] == lost["img_name"]]
    result = run_cli(["attok", "data", "slake", str(source), "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"skipped {len(gone)} question(s) whose image is missing" in result.stderr
    assert f"train qid {lost['qid']}: image {source / 'imgs' / lost['img_name']} does not exist" in result.stderr
    report = json.loads((tmp_path / "out" / "slake_build_report.json").read_text())
    assert report["skipped"] == len(gone) and [s["qid"] for s in report["skipped_questions"]] == [str(q) for q in gone]
    assert report["splits"]["train"]["questions"] == 6 - len(gone)
    assert len(_rows(tmp_path / "out", "slake_train")) == 6 - len(gone)


def test_non_english_file_with_lang_en_is_an_error(tmp_path):
    zh = [e for e in slake_entries("train") if e["q_lang"] == "zh"][:4]
    source = slake_release(tmp_path / "src", {"train": zh, "val": english_subset("val", 1),
                                              "test": english_subset("test", 1)})
    with pytest.raises(AttTokError, match=r"train.json: zero questions with q_lang 'en' \(questions by q_lang: "
                                          r"zh: 4\); choose --lang zh or --lang all"):
        build_slake(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_no_image_at_all_is_an_error_naming_the_folder(tmp_path):
    entries = {"train": english_subset("train", 3), "val": english_subset("val", 1), "test": english_subset("test", 1)}
    source = slake_release(tmp_path / "src", entries, images=False)
    with pytest.raises(AttTokError, match=r"train.json: none of the 3 'en' questions has its image under .*imgs"):
        build_slake(source, tmp_path / "out")


def test_bad_entries_name_file_entry_and_qid(tmp_path):
    train = english_subset("train", 3)
    del train[1]["answer"]
    source = slake_release(tmp_path / "a", {"train": train, "val": english_subset("val", 1),
                                            "test": english_subset("test", 1)})
    qid = train[1]["qid"]
    with pytest.raises(AttTokError, match=rf"train.json: entry 1 \(qid {qid}\): missing field\(s\) answer"):
        build_slake(source, tmp_path / "out")
    escape = english_subset("train", 1)
    escape[0]["img_name"] = "../../etc/passwd"
    source = slake_release(tmp_path / "b", {"train": escape, "val": english_subset("val", 1),
                                            "test": english_subset("test", 1)}, images=False)
    with pytest.raises(AttTokError, match=r"entry 0 \(qid 0\): image name '../../etc/passwd' points outside"):
        build_slake(source, tmp_path / "out")
    slake_release(tmp_path / "c", {"train": english_subset("train", 1)})
    with pytest.raises(AttTokError, match=r"c: no validate.json or validation.json"):
        build_slake(tmp_path / "c", tmp_path / "out")


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_replaces_only_what_an_earlier_build_of_the_name_wrote(tmp_path, capsys):
    """A rebuild needs --overwrite, which replaces only the files and dataset entries the earlier build's
    slake_build.json lists and nobody edited since; the user's own slake_val.json or dataset entry is refused with or
    without --overwrite, and the refusal does not suggest it."""
    entries = {"train": english_subset("train", 3), "val": english_subset("val", 1), "test": english_subset("test", 1)}
    source = slake_release(tmp_path / "src", entries)
    out = tmp_path / "out"
    out.mkdir()
    (out / "slake_val.json").write_text("my own validation split")
    (out / "dataset_info.json").write_text(json.dumps({"slake_test": {"file_name": "mine.json"}}))
    before = _files(out)
    for extra in ([], ["--overwrite"]):
        assert main(["data", "slake", str(source), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert "slake_val.json, dataset_info.json entry slake_test already exist and no earlier `attok data slake` " \
               "build of 'slake' wrote them" in err and "not files this command wrote" in err
        assert "--overwrite" not in err and _files(out) == before
    (out / "slake_val.json").unlink()
    (out / "dataset_info.json").unlink()
    assert main(["data", "slake", str(source), "--out", str(out)]) == 0
    assert set(json.loads((out / "slake_build.json").read_text())["files"]) >= {
        "slake_images", "slake_train.json", "slake_build_report.json", "slake_images/xmlab1/source.jpg"}
    before = _files(out)
    assert main(["data", "slake", str(source), "--out", str(out)]) == 2
    assert "already exist from an earlier build of 'slake'; pass --overwrite" in capsys.readouterr().err
    assert _files(out) == before
    assert main(["data", "slake", str(source), "--out", str(out), "--overwrite"]) == 0
    (out / "slake_val.json").write_text("[]\n")  # edited since the build: never replaced
    info = json.loads((out / "dataset_info.json").read_text())
    assert main(["data", "slake", str(source), "--out", str(out), "--overwrite"]) == 2
    assert "slake_val.json (edited since the build)" in capsys.readouterr().err
    assert (out / "slake_val.json").read_text() == "[]\n"
    (out / "slake_val.json").unlink()
    info["slake_test"]["formatting"] = "alpaca"  # an entry edited since the build: never replaced either
    (out / "dataset_info.json").write_text(json.dumps(info))
    assert main(["data", "slake", str(source), "--out", str(out), "--overwrite"]) == 2
    assert "dataset_info.json entry slake_test (edited since the build)" in capsys.readouterr().err


def test_an_out_inside_the_release_folder_is_refused(tmp_path, capsys):
    entries = {"train": english_subset("train", 3), "val": english_subset("val", 1), "test": english_subset("test", 1)}
    source = slake_release(tmp_path / "Slake1.0", entries)
    before = _files(source)
    for out in (source, source / "built", source / "imgs"):
        for extra in ([], ["--overwrite"]):
            assert main(["data", "slake", str(source), "--out", str(out), *extra]) == 2
            assert f"--out {out} is the release folder {source} or lies inside it" in capsys.readouterr().err
    assert _files(source) == before and not (source / "built").exists()
    kept = tmp_path / "data"  # a release kept as the images folder of the build: its files would be replaced
    (kept / "slake_images").mkdir(parents=True)
    (source).rename(kept / "slake_images" / "Slake1.0")
    assert main(["data", "slake", str(kept / "slake_images" / "Slake1.0"), "--out", str(kept)]) == 2
    assert "the build writes its images there, and the release folder" in capsys.readouterr().err


def test_a_release_answer_with_token_markup_is_refused_before_anything_is_written(tmp_path):
    """"<|ct_lung|> lung" in a SLAKE answer would be read as an attribute token at training (and passes for an
    AttTok answer): refused at build, naming the question; nothing is written."""
    entries = {split: english_subset(split, 4) for split in ("train", "val", "test")}
    entries["train"][1] = {**entries["train"][1], "answer": "<|ct_lung|> lung"}
    source = slake_release(tmp_path / "src", entries)
    with pytest.raises(AttTokError, match=r"slake train qid .*: the assistant text holds '<\|ct_lung\|>'"):
        build_slake(source, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

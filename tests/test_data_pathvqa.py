"""`attok data pathvqa` from the official pickle layout and from the Hugging Face parquet export; the restricted
unpickler (nothing in a pickle runs); every bad-input case with its error text."""

import json
import pickle
from collections import OrderedDict

import pytest
from conftest import run_cli
from vqa_sources import PATH_QA, pathvqa_parquet, pathvqa_release

from llamafactory_attok.data.pathvqa import build_pathvqa
from llamafactory_attok.data.safe_pickle import load_plain_pickle
from llamafactory_attok.errors import AttTokError


def _rows(out, name):
    return json.loads((out / f"{name}.json").read_text())


def test_official_layout(tmp_path):
    source = pathvqa_release(tmp_path / "pvqa")
    build = build_pathvqa(source, tmp_path / "out")
    assert build.summary()["splits"] == {"train": {"questions": 3, "closed": 2, "open": 1},
                                         "val": {"questions": 1, "closed": 0, "open": 1},
                                         "test": {"questions": 2, "closed": 1, "open": 1}}
    train = _rows(tmp_path / "out", "pathvqa_train")
    assert [r["answer_type"] for r in train] == ["closed", "open", "closed"]  # "No" is a yes/no answer too
    assert train[2]["messages"][1]["content"] == "No" and train[0]["qid"] == "train_0"
    assert train[0]["single_modality"] is True and train[0]["modality"] == "pathology"
    assert train[0]["images"] == ["pathvqa_images/train/train_0001.jpg"] == train[1]["images"]
    assert (tmp_path / "out" / train[0]["images"][0]).read_bytes() == \
        (source / "images" / "train" / "train_0001.jpg").read_bytes()
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text())
    assert {"pathvqa_train", "pathvqa_val", "pathvqa_test"} <= set(info)


@pytest.mark.parametrize("struct", [True, False], ids=["datasets-struct", "plain-bytes"])
def test_parquet_export(tmp_path, struct):
    source = pathvqa_parquet(tmp_path / "hf", struct=struct)
    out = tmp_path / "out"
    build = build_pathvqa(source, out, "pvqa")
    assert {s: c["questions"] for s, c in build.summary()["splits"].items()} == {"train": 3, "val": 1, "test": 2}
    train = _rows(out, "pvqa_train")
    assert train[0]["images"] == train[1]["images"] != train[2]["images"]  # one file per distinct image
    assert train[0]["images"][0].endswith(".jpg") and (out / train[0]["images"][0]).is_file()
    assert len(list((out / "pvqa_images").iterdir())) == 5
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the staging folder is gone


def test_missing_image_is_skipped_and_reported(tmp_path):
    source = pathvqa_release(tmp_path / "pvqa", missing=("train_0002",))
    result = run_cli(["attok", "data", "pathvqa", str(source), "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert result.returncode == 1
    assert "skipped 1 question(s) whose image is missing" in result.stderr
    assert "train qid train_2: " in result.stderr
    assert "train_qa.pkl: record 2: image images/train/train_0002.jpg does not exist" in result.stderr
    report = json.loads((tmp_path / "out" / "pathvqa_build_report.json").read_text())
    assert report["skipped"] == 1 and report["splits"]["train"]["questions"] == 2
    table = result.stdout.split("questions per answer type and dataset:")[1].splitlines()  # every builder ends so
    assert table[1].split()[:3] == ["answer", "type", "pathvqa_train"] and table[-1].split()[0] == "total"


class Payload:
    """Loading this would create a file — if the unpickler ever called what a pickle names."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _poison(source, split: str, data) -> None:
    (source / "qas" / split / f"{split}_qa.pkl").write_bytes(pickle.dumps(data))


def test_pickle_with_code_is_refused_and_nothing_runs(tmp_path):
    source = pathvqa_release(tmp_path / "pvqa")
    marker = tmp_path / "was_run"
    _poison(source, "train", [{"image": "train_0001", "question": "q?", "answer": Payload(str(marker))}])
    with pytest.raises(AttTokError, match=r"train_qa.pkl: refused: it refers to (io|builtins)\.open; only plain "
                                          r"lists, dicts and strings are accepted \(a pickle can run code"):
        build_pathvqa(source, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("data", "reason"), [
    (OrderedDict(a=1), r"refused: it refers to collections\.OrderedDict"),
    ({"image": "x"}, r"refused: it holds a dict, expected a list of \{image, question, answer\} records"),
    (["train_0001"], r"record 0: refused: a str, expected a dict with the strings image, question, answer"),
    ([{"image": "train_0001", "question": "q?", "answer": 3}],
     r"record 0: refused: answer must be non-empty strings \(record fields: \{'image': 'str', 'question': 'str', "
     r"'answer': 'int'\}\)"),
])
def test_pickle_holding_anything_but_plain_records_is_refused(tmp_path, data, reason):
    source = pathvqa_release(tmp_path / "pvqa")
    _poison(source, "val", data)
    with pytest.raises(AttTokError, match=r"val_qa.pkl: " + reason):
        build_pathvqa(source, tmp_path / "out")


def test_corrupt_pickle_and_escaping_image_names(tmp_path):
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(pickle.dumps([{"a": "b"}])[:-5])
    with pytest.raises(AttTokError, match=r"broken.pkl: not a readable pickle"):
        load_plain_pickle(broken)
    source = pathvqa_release(tmp_path / "pvqa")
    _poison(source, "test", [{"image": "../../secret", "question": "q?", "answer": "yes"}])
    with pytest.raises(AttTokError, match=r"test_qa.pkl: record 0: image name '../../secret' points outside"):
        build_pathvqa(source, tmp_path / "out")


def test_parquet_without_the_expected_columns(tmp_path):
    source = pathvqa_parquet(tmp_path / "hf", columns=("img", "question", "label"))
    with pytest.raises(AttTokError, match=r"train-00000-of-00001.parquet: expected the columns image, question, "
                                          r"answer; missing image, answer \(columns found: img, question, label\)"):
        build_pathvqa(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing left behind, not even the staging folder


def test_unrecognised_source_and_split_names(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AttTokError, match=r"empty: neither the official layout .*qas/train/train_qa.pkl"):
        build_pathvqa(tmp_path / "empty", tmp_path / "out")
    source = pathvqa_parquet(tmp_path / "hf")
    (source / "data" / "test-00000-of-00001.parquet").rename(source / "data" / "extra.parquet")
    with pytest.raises(AttTokError, match=r"extra.parquet: cannot tell the split from the file name"):
        build_pathvqa(source, tmp_path / "out")


def test_collision_then_overwrite(tmp_path):
    source = pathvqa_release(tmp_path / "pvqa")
    out = tmp_path / "out"
    build_pathvqa(source, out)
    with pytest.raises(AttTokError, match=r"pathvqa_images, pathvqa_train.json, pathvqa_val.json, pathvqa_test.json "
                                          r"and \d+ more already exist from an earlier build of 'pathvqa'; pass "
                                          r"--overwrite"):
        build_pathvqa(source, out)
    assert build_pathvqa(source, out, overwrite=True).summary()["splits"]["test"]["questions"] == len(PATH_QA["test"])


def test_the_users_own_image_at_an_image_path_is_never_replaced(tmp_path):
    """An image of the user's where the build would write one (not listed by pathvqa_build.json) is refused, with or
    without overwrite; one the earlier build wrote is replaced with overwrite, unless it was edited since."""
    source = pathvqa_release(tmp_path / "pvqa")
    out = tmp_path / "out"
    build_pathvqa(source, out)
    image = out / "pathvqa_images" / "train" / "train_0001.jpg"
    manifest = out / "pathvqa_build.json"
    listed = json.loads(manifest.read_text())
    listed["files"].remove("pathvqa_images/train/train_0001.jpg")  # as if the user had put it there
    manifest.write_text(json.dumps(listed))
    image.write_bytes(b"my own slide")
    for overwrite in (False, True):
        with pytest.raises(AttTokError, match=r"pathvqa_images/train/train_0001.jpg already exist and no earlier "
                                              r"`attok data pathvqa` build of 'pathvqa' wrote them") as err:
            build_pathvqa(source, out, overwrite=overwrite)
        assert "--overwrite" not in str(err.value) and image.read_bytes() == b"my own slide"
    listed["files"].append("pathvqa_images/train/train_0001.jpg")
    manifest.write_text(json.dumps(listed))
    with pytest.raises(AttTokError, match=r"train_0001.jpg \(edited since the build\)"):
        build_pathvqa(source, out, overwrite=True)
    assert image.read_bytes() == b"my own slide"


def test_an_out_inside_the_release_folder_is_refused(tmp_path):
    source = pathvqa_release(tmp_path / "pvqa")
    for out in (source, source / "images" / "built"):
        with pytest.raises(AttTokError, match=r"is the release folder .*pvqa or lies inside it"):
            build_pathvqa(source, out, overwrite=True)
    assert not (source / "images" / "built").exists() and not (source / "dataset_info.json").exists()


def test_split_without_any_image_is_an_error(tmp_path):
    source = pathvqa_release(tmp_path / "pvqa", missing=("val_0001",))
    with pytest.raises(AttTokError, match=r"pvqa: no question with an image in split\(s\) val \(1 skipped for a "
                                          r"missing image\); nothing to build"):
        build_pathvqa(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()

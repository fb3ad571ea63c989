"""VQA-RAD builder and LLM attribute extraction against real OpenAI-compatible servers on 127.0.0.1:
a scripted one (happy path, 429/500 retries, timeouts, malformed replies) and `llamafactory-cli api` serving
the tiny model (junk replies). The `openai` client is used as is, never mocked."""

import json

import pytest
from conftest import REPO, run_cli
from openai import OpenAI
from scripted_openai import ScriptedServer

from llamafactory_attok.data.vqa_attributes import KeywordLLM, ReplyCache, extract_attributes
from llamafactory_attok.data.vqa_rad import build_vqa_rad
from llamafactory_attok.errors import AttTokError
from llamafactory_attok.vocab import load_vocab

VQA_RAD = REPO.parent / "shared" / "data" / "vqa_rad"  # the public release, beside every checkout and CI clone
needs_vqa_rad = pytest.mark.skipif(not VQA_RAD.is_dir(), reason=f"VQA-RAD release not found at {VQA_RAD}")


def _rows(answers: list[str]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"<image>What is seen {i}?"},
                          {"role": "assistant", "content": a}], "images": ["img.png"], "qid": str(i),
             "modality": "ct", "organ": "HEAD"} for i, a in enumerate(answers)]


ANSWERS = ["hemorrhage", "hemorrhage", "fracture", "fracture", "edema"]


def _llm(server, tmp_path, retries=3, timeout=5.0, attempts=2) -> KeywordLLM:
    client = OpenAI(base_url=server.url, api_key="test", max_retries=retries, timeout=timeout)
    return KeywordLLM(client, "scripted", ReplyCache(tmp_path / "cache.json"), max_attempts=attempts)


def test_three_steps_tokens_vocab_and_cache(tmp_path):
    with ScriptedServer() as server:
        result = extract_attributes(_rows(ANSWERS), _llm(server, tmp_path), min_count=2, concurrency=3)
        assert result.vocab == {"<|ct_hemorrhage|>": "hemorrhage", "<|ct_fracture|>": "fracture"}
        assert [r["messages"][1]["content"] for r in result.rows[:3]] == [
            "<|ct_hemorrhage|> hemorrhage", "<|ct_hemorrhage|> hemorrhage", "<|ct_fracture|> fracture"]
        assert result.rows[4]["attributes"] == []  # "edema" is rare (1 < min_count): dropped, not invented
        assert result.report["failures"] == [] and result.report["calls"] == 11
        first = server.completions
        again = extract_attributes(_rows(ANSWERS), _llm(server, tmp_path), min_count=2)
        assert server.completions == first and again.report["calls"] == 0  # a rerun repeats no call
        assert again.vocab == result.vocab


def test_429_and_500_are_retried_by_the_client(tmp_path):
    with ScriptedServer(fail_first=[429, 500, 500]) as server:
        result = extract_attributes(_rows(ANSWERS[:2]), _llm(server, tmp_path), min_count=1, concurrency=1)
        assert result.report["failures"] == [] and server.requests == server.completions + 3
        assert result.vocab == {"<|ct_hemorrhage|>": "hemorrhage"}


def test_timeouts_become_listed_failures(tmp_path):
    with ScriptedServer(delay=1.5) as server:
        result = extract_attributes(_rows(ANSWERS[:2]), _llm(server, tmp_path, retries=0, timeout=0.3), min_count=1)
    steps = {(f["item"], f["step"]) for f in result.report["failures"]}
    assert steps == {("0", "keywords"), ("1", "keywords")}
    assert all("Timeout" in f["error"] for f in result.report["failures"])
    assert result.vocab == {} and all(r["attributes"] == [] for r in result.rows)


def test_malformed_replies_are_retried_then_reported(tmp_path):
    with ScriptedServer(malformed=True) as server:
        result = extract_attributes(_rows(ANSWERS[:2]), _llm(server, tmp_path, attempts=2), min_count=1)
        assert server.completions == 4  # each QA asked twice
    assert len(result.report["failures"]) == 2
    assert all("malformed reply after 2 attempt(s)" in f["error"] for f in result.report["failures"])


@needs_vqa_rad
def test_vqa_rad_official_split(tmp_path):
    written = build_vqa_rad(VQA_RAD, tmp_path, "rad")
    train, test = (json.loads((tmp_path / written[f"rad_{s}"]).read_text()) for s in ("train", "test"))
    assert (len(train), len(test)) == (1797, 451)
    assert sum(r["answer_type"] == "closed" for r in test) == 272
    assert (tmp_path / test[0]["images"][0]).is_file()


@needs_vqa_rad
def test_cli_end_to_end_on_vqa_rad_subset(tmp_path):
    build_vqa_rad(VQA_RAD, tmp_path / "rad", "rad")
    rows = json.loads((tmp_path / "rad" / "rad_test.json").read_text())[:12]
    subset = tmp_path / "rad" / "subset.json"
    subset.write_text(json.dumps(rows))
    with ScriptedServer() as server:
        result = run_cli(["attok", "data", "vqa-attributes", str(subset), "--out", str(tmp_path / "tagged"),
                          "--name", "rad_attok", "--base-url", server.url, "--model", "scripted", "--min-count", "2",
                          "--modality", "rad"], cwd=tmp_path, OPENAI_API_KEY="sk-secret-never-logged")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sk-secret-never-logged" not in result.stdout + result.stderr
    out = tmp_path / "tagged"
    vocab = load_vocab(out / "rad_attok_vocab.yaml")
    assert "<|rad_no|>" in vocab.tokens and "<|rad_yes|>" in vocab.tokens
    info = json.loads((out / "dataset_info.json").read_text())
    tagged = json.loads((out / "rad_attok.json").read_text())
    assert "rad_attok" in info and (out / tagged[0]["images"][0]).is_file()


@pytest.mark.slow
def test_junk_from_a_real_lf_api_server_is_reported_not_invented(attok_api, tmp_path):
    client = attok_api  # a real `llamafactory-cli api` server whose replies are attribute tokens, not keywords
    data = tmp_path / "qa.json"
    data.write_text(json.dumps(_rows(ANSWERS[:3])))
    result = run_cli(["attok", "data", "vqa-attributes", str(data), "--out", str(tmp_path / "out"), "--name",
                      "junk", "--base-url", str(client.base_url), "--model", "tiny",
                      "--max-attempts", "2", "--concurrency", "1", "--min-count", "1"], cwd=tmp_path)
    assert result.returncode == 1
    report = json.loads((tmp_path / "out" / "junk_report.json").read_text())
    assert len(report["failures"]) == 3 and all("malformed reply" in f["error"] for f in report["failures"])
    assert not (tmp_path / "out" / "junk_vocab.yaml").exists()


def _fake_vqa_rad(tmp_path, entries: list[dict], images: dict[str, bytes]):
    source = tmp_path / "release"
    (source / "VQA_RAD Image Folder").mkdir(parents=True)
    for name, data in images.items():
        (source / "VQA_RAD Image Folder" / name).write_bytes(data)
    base = {"question": "Is it normal?", "answer": "yes", "answer_type": "CLOSED", "phrase_type": "freeform"}
    (source / "VQA_RAD Dataset Public.json").write_text(json.dumps([{**base, **e} for e in entries]))
    return source


def _files_under(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_vqa_rad_bad_entry_writes_nothing(tmp_path):
    source = _fake_vqa_rad(tmp_path, [{"qid": 1, "image_name": "a.jpg"}, {"qid": 2, "image_name": "a.jpg",
                                                                           "phrase_type": "oops"}], {"a.jpg": b"A"})
    with pytest.raises(AttTokError, match=r"Public.json: entry 1 \(qid 2\): unknown phrase_type 'oops'"):
        build_vqa_rad(source, tmp_path / "out", "rad")
    assert not (tmp_path / "out").exists()


def test_vqa_rad_keeps_two_images_of_one_file_name_in_two_folders_apart(tmp_path):
    """a/img.jpg and b/img.jpg of a release stay two images (their release paths), not one file the later
    replaces — which pointed a training question at another image."""
    source = tmp_path / "release"
    for folder in ("a", "b"):
        (source / "VQA_RAD Image Folder" / folder).mkdir(parents=True)
        (source / "VQA_RAD Image Folder" / folder / "img.jpg").write_bytes(folder.encode() * 8)
    base = {"question": "Is it red?", "answer_type": "CLOSED"}
    (source / "VQA_RAD Dataset Public.json").write_text(json.dumps([
        {**base, "qid": 1, "image_name": "a/img.jpg", "answer": "yes", "phrase_type": "freeform"},
        {**base, "qid": 2, "image_name": "b/img.jpg", "answer": "no", "phrase_type": "test_freeform"}]))
    build_vqa_rad(source, tmp_path / "out", "rad")
    out = tmp_path / "out"
    train, test = (json.loads((out / f"rad_{s}.json").read_text())[0]["images"][0] for s in ("train", "test"))
    assert train != test and (out / train).read_bytes() == b"a" * 8 and (out / test).read_bytes() == b"b" * 8


def test_a_temp_image_left_by_a_killed_build_is_removed_by_the_next(tmp_path):
    """A SIGKILL during an atomic image write leaves `.img.jpg.XXXXXXXX`; the next build of the name removes it (only
    such a temp of an image it writes: a hidden file of the user's there stays)."""
    source = _fake_vqa_rad(tmp_path, [{"qid": 1, "image_name": "a.jpg"}], {"a.jpg": b"A"})
    build_vqa_rad(source, tmp_path / "out", "rad")
    folder = tmp_path / "out" / "rad_images"
    (folder / ".a.jpg.k2x9_q1z").write_bytes(b"half")
    (folder / ".a.jpg.my-notes").write_text("mine")
    build_vqa_rad(source, tmp_path / "out", "rad", overwrite=True)
    assert not (folder / ".a.jpg.k2x9_q1z").exists() and (folder / ".a.jpg.my-notes").read_text() == "mine"


def test_vqa_rad_never_overwrites_an_image_another_dataset_uses(tmp_path):
    """An image the earlier build of the name wrote is replaced only with overwrite; an image of the user's at the
    path the build writes (rad_images/b.jpg, which no rad_build.json lists) is refused with or without it, naming it,
    and without suggesting --overwrite; an identical one is reused."""
    out = tmp_path / "out"
    build_vqa_rad(_fake_vqa_rad(tmp_path / "v1", [{"qid": 1, "image_name": "a.jpg"}], {"a.jpg": b"A"}), out, "rad")
    (out / "dataset_info.json").unlink()  # dataset names free again; the image is still used by rad_train
    before = _files_under(out)
    source = _fake_vqa_rad(tmp_path / "v2", [{"qid": 1, "image_name": "a.jpg"}], {"a.jpg": b"B"})
    with pytest.raises(AttTokError, match=r"rad_images, rad_train.json, rad_test.json, rad_build.json already exist "
                                          r"from an earlier build of 'rad'; pass --overwrite"):
        build_vqa_rad(source, out, "rad")
    assert _files_under(out) == before
    (out / "rad_images" / "b.jpg").write_bytes(b"my own scan")
    both = [{"qid": 1, "image_name": "a.jpg"}, {"qid": 2, "image_name": "b.jpg"}]
    mine = _fake_vqa_rad(tmp_path / "v3", both, {"a.jpg": b"B", "b.jpg": b"B"})
    for overwrite in (False, True):
        with pytest.raises(AttTokError, match=r"rad_images/b.jpg already exist and no earlier `attok data vqa-rad` "
                                              r"build of 'rad' wrote them") as err:
            build_vqa_rad(mine, out, "rad", overwrite=overwrite)
        assert "--overwrite" not in str(err.value)
    assert _files_under(out) == {**before, "rad_images/b.jpg": b"my own scan"}
    build_vqa_rad(source, out, "rad", overwrite=True)  # the build's own image: replaced when asked
    assert (out / "rad_images" / "a.jpg").read_bytes() == b"B"
    assert (out / "rad_images" / "b.jpg").read_bytes() == b"my own scan"  # not the build's, and not in its way
    build_vqa_rad(_fake_vqa_rad(tmp_path / "v4", both, {"a.jpg": b"B", "b.jpg": b"my own scan"}), out, "rad",
                  overwrite=True)  # identical: reused, and the build's from now on
    assert "rad_images/b.jpg" in json.loads((out / "rad_build.json").read_text())["files"]


def test_vqa_attributes_name_collision_is_refused_before_any_call(tmp_path, capsys):
    from llamafactory_attok.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "tagged.json").write_text("[]\n")
    data = tmp_path / "qa.json"
    data.write_text(json.dumps(_rows(ANSWERS[:1])))
    for extra in ([], ["--overwrite"]):  # the user's own tagged.json: never replaced, --overwrite not suggested
        assert main(["data", "vqa-attributes", str(data), "--out", str(out), "--name", "tagged", "--base-url",
                     "http://127.0.0.1:9/v1", "--model", "m", *extra]) == 2
        err = capsys.readouterr().err
        assert f"{out}: tagged.json already exist and no earlier `attok data vqa-attributes` build of 'tagged' " \
               "wrote them" in err and "--overwrite" not in err
        assert sorted(p.name for p in out.iterdir()) == ["tagged.json"]  # no report, no cache, no manifest

"""Datasets and manifests written piece by piece: the same bytes as ``json.dumps(indent=1)``, read back row by row."""

import json

import pytest

from llamafactory_attok.data.lf_format import iter_json_array, write_json
from llamafactory_attok.errors import AttTokError
from llamafactory_attok.json_stream import Lazy, iter_json


def _plain(value):
    if isinstance(value, Lazy):
        return [_plain(v) for v in value.make()]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


VALUES = [
    {"images": Lazy(lambda: iter([{"path": "a/1.png", "label": "é", "n": [1, {"z": None}]}, [], {}, "q\nz"])),
     "files": [], "hashes": {}, "none": Lazy(lambda: iter(()))},
    Lazy(lambda: iter([1, Lazy(lambda: iter([2, 3])), {"k": Lazy(lambda: iter(()))}])),
    {}, [], {"deep": {"er": Lazy(lambda: iter([None, 1.5, True]))}},
]


@pytest.mark.parametrize("value", VALUES)
def test_lazy_lists_give_the_text_of_json_dumps(value):
    assert "".join(iter_json(value)) == json.dumps(_plain(value), indent=1, ensure_ascii=False)


def test_a_lazy_list_is_made_again_each_time_it_is_written(tmp_path):
    rows = Lazy(lambda: ({"i": i} for i in range(3)))
    write_json(tmp_path / "a.json", {"rows": rows})
    write_json(tmp_path / "b.json", {"rows": rows})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert json.loads((tmp_path / "a.json").read_text()) == {"rows": [{"i": 0}, {"i": 1}, {"i": 2}]}


@pytest.mark.parametrize("rows", [[], [{"a": 1}], [{"a": [1, 2]}, "x", 3, None]])
def test_rows_are_read_back_one_at_a_time_as_json_loads_reads_them(tmp_path, rows):
    write_json(tmp_path / "d.json", rows)
    assert list(iter_json_array(tmp_path / "d.json")) == rows


@pytest.mark.parametrize(("text", "line"), [('[{"a": 1},\n {"a": }]', 2), ('{"a": 1}', 1), ('[1, 2]\n[3]', 2),
                                            ('[1 2]', 1)])
def test_a_bad_dataset_file_names_its_line(tmp_path, text, line):
    (tmp_path / "d.json").write_text(text)
    with pytest.raises(AttTokError, match=rf"d.json: line {line}, column \d+: invalid JSON"):
        list(iter_json_array(tmp_path / "d.json"))

"""Progress reaches a log file as periodic lines (a bar only on a terminal)."""

from llamafactory_attok.progress import progress


def test_periodic_lines_and_a_last_line_when_not_a_terminal(capsys):
    assert list(progress(range(3), desc="images", every_s=0.0)) == [0, 1, 2]
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["attok: images: 1/3 (33 %)", "attok: images: 2/3 (67 %)",
                                                      "attok: images: 3/3 (100 %)", "attok: images: 3/3 (100 %)"]
    assert lines[-1].endswith(" s") and " in " in lines[-1]


def test_unknown_total_counts_only(capsys):
    list(progress(iter([1, 2]), desc="augment", every_s=3600))
    assert capsys.readouterr().err.startswith("attok: augment: 2, ")

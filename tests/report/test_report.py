"""`clap-data report` of the session's tokenized corpus, opened in the system's headless Chromium: every image
decodes, the page has no script, loads nothing from outside and logs no error, and the numbers its tables show
are those pyarrow computes from the same files on its own. Text from a dataset is escaped, not interpreted.

Without a browser on PATH the browser tests fail under CI (CI=true: the machine should have installed one,
see .ci/run) and are skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from clap_data.cli import app, report_commands  # noqa: F401  (report_commands registers `report` on the app)
from clap_data.schemas import ACTION_TOKENS, PSEUDO_TOKENS
from tests.report.chromium import BROWSERS, Browser, RenderedPage, find_browser, render

runner = CliRunner()
SAMPLES = 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _browser() -> str:
    found = find_browser()
    if found is None:
        message = (f"no Chromium-family browser on PATH (looked for {', '.join(BROWSERS)}): the report's browser "
                   "test needs one (Debian: apt-get install chromium; .ci/run installs it)")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _render(html_file: Path, work: Path) -> RenderedPage:
    with Browser(_browser(), work / "profile", work / "chromium.log") as browser:
        return render(browser, html_file.as_uri())


def _report(datasets: list[Path], out: Path, *extra: str) -> str:
    result = runner.invoke(app, ["report", *map(str, datasets), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def report(tokenized_corpus, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    corpus = tokenized_corpus
    output = _report([corpus.robot, corpus.human], out, "--act-vae", str(corpus.act_vae), "--samples", str(SAMPLES))
    return out, output


@pytest.fixture(scope="module")
def page(report, tmp_path_factory) -> RenderedPage:
    return _render(report[0], tmp_path_factory.mktemp("chromium"))


def _num(cell: str) -> float:
    return float(cell.replace(",", ""))


def _data(root: Path, columns: list[str]) -> pa.Table:
    return pq.ParquetDataset(root / "data").read(columns=columns)


# Per dataset: episode lengths and tasks (2 figures) + one per token column; then human vs robot, the
# codebook map and the decoded chunks.
FIGURES = (2 + 2) + (2 + 1) + 3


def test_every_image_decodes_and_nothing_else_loads(page, report):
    assert len(page.images) == FIGURES
    for image in page.images:
        assert image["decoded"] and image["complete"], image["alt"]
        assert image["naturalWidth"] > 100 and image["naturalHeight"] > 100, image["alt"]
        assert image["scheme"] == "data:image/png;base64,"
        assert image["alt"]
    assert page.scripts == 0
    assert page.external == []  # only #anchors and data: URIs
    assert page.problems == []  # no console error or warning, no exception, no failed load
    assert page.title == "clap-data report"
    assert "<script" not in report[0].read_text()


def test_summary_names_the_file_its_size_and_the_figures(report):
    out, output = report
    assert str(out) in output
    assert f"({out.stat().st_size / 1e6:.2f} MB)" in output
    assert f"2 dataset(s), {FIGURES} figures" in output
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # written beside, renamed: no leftover


def test_screenshot(page, tmp_path):
    shot = tmp_path / "report.png"
    shot.write_bytes(page.screenshot)
    assert page.screenshot.startswith(PNG_SIGNATURE)
    width, height = int.from_bytes(page.screenshot[16:20], "big"), int.from_bytes(page.screenshot[20:24], "big")
    assert width == 1280 and height > 3000  # the whole page, not one viewport
    assert len(page.screenshot) > 100_000  # figures drawn, not a blank page


def test_overview_counts(page, tokenized_corpus):
    rows = {row[0]: row for row in page.tables["overview"]}
    for root, robot_type, columns in ((tokenized_corpus.robot, "S1-stationary", "action_tokens, pseudo_tokens"),
                                      (tokenized_corpus.human, "human", "pseudo_tokens")):
        name, shown_type, fps, episodes, frames, tasks, token_columns, quarantined, path = rows[root.name]
        assert shown_type == robot_type and path == str(root) and token_columns == columns
        assert int(fps) == json.loads((root / "meta/info.json").read_text())["fps"]
        assert _num(episodes) == pq.ParquetDataset(root / "meta/episodes").read(["episode_index"]).num_rows
        assert _num(frames) == _data(root, ["index"]).num_rows
        assert _num(tasks) == pq.read_table(root / "meta/tasks.parquet").num_rows
        assert _num(quarantined) == pq.read_table(root / "quarantine.parquet").num_rows
    assert rows[tokenized_corpus.human.name][7] == "6"  # the Ego4D factory's six bad actions


def test_episode_lengths_and_tasks(page, tokenized_corpus):
    for i, root in enumerate((tokenized_corpus.robot, tokenized_corpus.human)):
        lengths = np.array(pq.ParquetDataset(root / "meta/episodes").read(["length"]).column("length").to_pylist())
        [row] = page.tables[f"d{i}-lengths"]
        assert [_num(c) for c in row] == [len(lengths), lengths.sum(), lengths.min(), np.median(lengths), lengths.max()]
        data = _data(root, ["task_index", "episode_index"]).to_pydict()
        frames = Counter(data["task_index"])
        episodes = Counter(t for t, _ in set(zip(data["task_index"], data["episode_index"], strict=True)))
        task_table = pq.read_table(root / "meta/tasks.parquet", columns=["task_index", "task"]).to_pydict()
        names = dict(zip(task_table["task_index"], task_table["task"], strict=True))
        shown = {int(index): (task, _num(e), _num(f)) for index, task, e, f in page.tables[f"d{i}-tasks"]}
        assert shown == {t: (names[t], episodes[t], frames[t]) for t in names}
        assert [_num(r[3]) for r in page.tables[f"d{i}-tasks"]] == sorted(frames.values(), reverse=True)


def _usage(root: Path, column: str, nq: int) -> np.ndarray:
    """[frames, 2·Nq] codes, -1 where the slot's arm is inactive."""
    table = _data(root, [column, "arm_mask"])
    codes = np.array(table.column(column).to_pylist())
    mask = np.repeat(np.array(table.column("arm_mask").to_pylist()) != 0, nq, axis=1)
    return np.where(mask, codes, -1)


def test_code_usage_per_slot(page, tokenized_corpus):
    cases = [(0, tokenized_corpus.robot, ACTION_TOKENS), (0, tokenized_corpus.robot, PSEUDO_TOKENS),
             (1, tokenized_corpus.human, PSEUDO_TOKENS)]
    for i, root, column in cases:
        nq = json.loads((root / "meta/info.json").read_text())["features"][column]["info"]["num_queries"]
        codes = _usage(root, column, nq)
        rows = page.tables[f"d{i}-{column}-slots"]
        assert len(rows) == 2 * nq
        for slot, row in enumerate(rows):
            counted = codes[:, slot][codes[:, slot] >= 0]
            values, counts = np.unique(counted, return_counts=True)
            assert _num(row[0]) == slot and row[1] == f"{('left', 'right')[slot // nq]} {slot % nq}"
            assert _num(row[2]) == len(counted) and _num(row[3]) == len(values)
            assert _num(row[4]) == values[np.argmax(counts)]
            assert _num(row[5]) == pytest.approx(counts.max() / len(counted), rel=1e-3)


def test_human_against_robot(page, tokenized_corpus):
    robot = _usage(tokenized_corpus.robot, ACTION_TOKENS, 4)
    human = _usage(tokenized_corpus.human, PSEUDO_TOKENS, 4)
    robot, human = robot[robot >= 0], human[human >= 0]
    [row] = page.tables["human-vs-robot"]
    sha = json.loads((tokenized_corpus.robot / "meta/info.json").read_text())["features"][ACTION_TOKENS]["info"]
    assert row[0] == sha["checkpoint_sha256"][:16] + "…"
    assert [_num(c) for c in row[1:6]] == [
        len(human), len(robot), len(set(human)), len(set(robot)), len(set(human) & set(robot)),
    ]
    share_h = np.bincount(human, minlength=16) / len(human)
    share_r = np.bincount(robot, minlength=16) / len(robot)
    assert _num(row[6]) == pytest.approx(np.minimum(share_h, share_r).sum(), rel=1e-3)


def test_codebook_usage(page, tokenized_corpus):
    robot = np.concatenate([_usage(tokenized_corpus.robot, c, 4).ravel() for c in (ACTION_TOKENS, PSEUDO_TOKENS)])
    human = _usage(tokenized_corpus.human, PSEUDO_TOKENS, 4).ravel()
    used_r, used_h = set(robot[robot >= 0]), set(human[human >= 0])
    k = json.loads((tokenized_corpus.act_vae / "config.json").read_text())["codebook_size"]
    assert [_num(c) for c in page.tables["codebook"][0]] == [k, len(used_r), len(used_h), k - len(used_r | used_h)]


def test_decoded_chunks(page, tokenized_corpus):
    rows = page.tables["decoded"]
    assert [r[3] for r in rows] == [ACTION_TOKENS, PSEUDO_TOKENS] * SAMPLES
    data = _data(tokenized_corpus.robot, ["episode_index", "frame_index", "action_tokens_padded"]).to_pydict()
    unpadded = {(e, f) for e, f, p in zip(*data.values(), strict=True) if not p}
    frames = {(int(r[1]), int(r[2])) for r in rows}
    assert len(frames) == SAMPLES and frames <= unpadded
    assert all(r[0] == tokenized_corpus.robot.name for r in rows)
    for row in rows:
        assert all(np.isfinite(_num(c)) and _num(c) >= 0 for c in row[4:])


def test_without_act_vae_the_page_says_what_it_left_out(tokenized_corpus, tmp_path):
    out = tmp_path / "plain.html"
    output = _report([tokenized_corpus.human], out)
    text = out.read_text()
    assert "No --act-vae checkpoint given: the codebook map and the decoded chunks are omitted" in text
    assert "Not shown: no robot dataset with action_tokens." in text
    assert "1 dataset(s), 3 figures" in output
    assert "No --act-vae checkpoint given" in output  # the summary repeats the notes


def test_text_from_the_dataset_is_escaped(tokenized_corpus, tmp_path):
    """A task and a quarantine reason holding markup show as text: no element, no request, no error."""
    root = tmp_path / "hostile"
    shutil.copytree(tokenized_corpus.human, root)
    hostile = '<img src="x" onerror="alert(1)"> & "quoted" <b>'
    tasks = pq.read_table(root / "meta/tasks.parquet")
    names = tasks.column("task").to_pylist()
    pq.write_table(tasks.set_column(tasks.schema.get_field_index("task"), "task", pa.array([hostile, *names[1:]])),
                   root / "meta/tasks.parquet")
    quarantine = pq.read_table(root / "quarantine.parquet")
    reasons = quarantine.column("reason").to_pylist()
    column = quarantine.schema.get_field_index("reason")
    pq.write_table(quarantine.set_column(column, "reason", pa.array([f"</table>{hostile}", *reasons[1:]])),
                   root / "quarantine.parquet")
    out = tmp_path / "hostile.html"
    _report([root], out)
    page = _render(out, tmp_path)
    assert len(page.images) == 3 and page.problems == [] and page.scripts == 0
    assert hostile in [row[1] for row in page.tables["d0-tasks"]]
    assert page.tables["d0-quarantine"][0][3] == f"</table>{hostile}"


def test_errors_are_one_sentence(tmp_path, tokenized_corpus):
    result = runner.invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 1
    assert "meta/info.json is missing" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["report", str(tokenized_corpus.human), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{tmp_path} is a folder; --out names the HTML file to write" in result.output

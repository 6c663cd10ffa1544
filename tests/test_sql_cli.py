"""`clap-data sql` (one query, table / JSON / CSV, --db, the interactive prompt) and `clap-data stats`,
through the command line, on the tokenized corpus."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import clap_data.cli.stats_commands  # noqa: F401  (registers sql and stats)
from clap_data.cli import app

runner = CliRunner()
QUERY = "SELECT dataset, count(*) AS n, count(action_tokens) AS tokenized FROM frames GROUP BY dataset ORDER BY dataset"
MAIN = "import clap_data.cli.stats_commands; from clap_data.cli import main; main()"


@pytest.fixture(scope="module")
def roots(tokenized_corpus) -> list[str]:
    return [str(tokenized_corpus.robot), str(tokenized_corpus.human)]


@pytest.fixture(scope="module")
def expected(tokenized_corpus) -> list[dict]:
    """What QUERY answers, from the parquet files."""
    rows = []
    for root in (tokenized_corpus.robot, tokenized_corpus.human):
        table = pq.ParquetDataset(root / "data").read()
        tokenized = table.num_rows if "action_tokens" in table.column_names else 0
        rows.append({"dataset": root.name, "n": table.num_rows, "tokenized": tokenized})
    return rows


def sql(*args: str):
    return runner.invoke(app, ["sql", *args])


def test_query_prints_a_table(roots, expected):
    result = sql(*roots, QUERY)
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines()]
    for row in expected:
        assert [row["dataset"], "│", str(row["n"]), "│", str(row["tokenized"])] in lines
    assert "(2 rows)" in result.stdout


def test_query_as_json_and_csv(roots, expected):
    as_json = sql(*roots, QUERY, "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == expected
    as_csv = sql(*roots, "--csv", QUERY)
    assert as_csv.exit_code == 0, as_csv.output
    parsed = csv.DictReader(io.StringIO(as_csv.stdout))
    assert [{k: int(v) if v.isdigit() else v for k, v in row.items()} for row in parsed] == expected
    lists = sql(roots[0], "SELECT action_tokens FROM frames ORDER BY index LIMIT 1", "--csv")
    first = pq.ParquetDataset(Path(roots[0]) / "data").read().sort_by("index").column("action_tokens")[0].as_py()
    assert json.loads(list(csv.reader(io.StringIO(lists.stdout)))[1][0]) == first


def test_table_output_is_capped(roots):
    result = sql(roots[1], "SELECT frame_index FROM frames", "--max-rows", "5")
    assert result.exit_code == 0, result.output
    assert "only the first 5 are shown" in result.stdout


def test_db_file_holds_views_any_duckdb_opens(roots, expected, tmp_path):
    db = tmp_path / "corpus.duckdb"
    result = sql(*roots, "--db", str(db))
    assert result.exit_code == 0, result.output
    with duckdb.connect(str(db), read_only=True) as connection:
        cursor = connection.execute(QUERY)
        names = [d[0] for d in cursor.description]
        assert [dict(zip(names, row, strict=True)) for row in cursor.fetchall()] == expected
        views = connection.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
        assert {name for (name,) in views} == {"frames", "episodes", "tasks", "quarantine", "datasets"}


def test_prompt_reads_statements_from_stdin(roots, expected, tmp_path):
    script = f"SELECT 6 * 7\n  AS answer;\n.tables\n{QUERY};\nSELECT nope FROM frames;\n.quit\nSELECT 'not run';\n"
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path)}
    child = subprocess.run([sys.executable, "-c", MAIN, "sql", *roots], input=script, capture_output=True,
                           text=True, env=env, timeout=120)
    assert "42" in child.stdout
    assert "quarantine" in child.stdout and "view" in child.stdout  # .tables
    assert str(expected[1]["n"]) in child.stdout
    assert "not run" not in child.stdout
    errors = child.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: the query failed: Binder Error")
    assert "Traceback" not in child.stderr
    assert child.returncode == 1  # a script with a failed statement fails
    assert not (tmp_path / "clap-data" / "sql_history").exists()  # piped input is not history


def test_prompt_on_a_terminal_keeps_history(roots, tmp_path):
    """Through a pseudo-terminal, as a person types: readline prompts, and the history is saved."""
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path), "TERM": "dumb"}
    controller, terminal = pty.openpty()
    child = subprocess.Popen([sys.executable, "-c", MAIN, "sql", roots[0]], stdin=terminal, stdout=terminal,
                             stderr=terminal, env=env, close_fds=True)
    os.close(terminal)
    seen = _read_until(controller, b"sql> ")
    os.write(controller, b"SELECT 40 + 2 AS answer;\n")
    seen += _read_until(controller, b"sql> ")
    os.write(controller, b".quit\n")
    assert child.wait(timeout=60) == 0
    os.close(controller)
    assert b"42" in seen
    assert "SELECT 40 + 2 AS answer;" in (tmp_path / "clap-data" / "sql_history").read_text()


def _read_until(fd: int, marker: bytes, timeout: float = 60.0) -> bytes:
    data, deadline = b"", time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            data += os.read(fd, 4096)
    assert marker in data, data.decode(errors="replace")
    return data


@pytest.mark.parametrize(("args", "message"), [
    (["/no/such/dataset", "SELECT 1"], "error: /no/such/dataset does not exist"),
    (["/no/such/dataset"], "/no/such/dataset does not exist"),
    (["{robot}", "/no/such/dataset"], "/no/such/dataset does not exist: give dataset folders"),
    (["{robot}", "SELEC 1 FROM frames"], 'error: the query failed: Parser Error: syntax error at or near "SELEC"'),
    (["{robot}", "SELECT * FROM framez"], "Table with name framez does not exist"),
    (["{robot}", "{robot}/meta/info.json"], "info.json is a file, not a dataset folder; to run the statements"),
])
def test_errors_are_one_sentence(roots, args, message):
    result = sql(*(a.format(robot=roots[0]) for a in args))
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output and "LINE 1" not in result.output


def test_conflicting_options_are_usage_errors(roots, tmp_path):
    assert sql(roots[0], QUERY, "--json", "--csv").exit_code == 2
    assert sql(roots[0], QUERY, "--db", str(tmp_path / "x.duckdb")).exit_code == 2


def test_stats_json_and_tables(roots, tokenized_corpus):
    as_json = runner.invoke(app, ["stats", *roots, "--json", "--by", "dataset", "--top", "2"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["by"] == "dataset" and [c["column"] for c in report["columns"]] == ["action_tokens", "pseudo_tokens"]
    pseudo = report["columns"][1]
    assert {g["group"]: g["frames"] for g in pseudo["groups"]} == {
        Path(r).name: pq.ParquetDataset(Path(r) / "data").read().num_rows for r in roots}
    assert all(len(slot["usage"]["top_codes"]) <= 2 for slot in pseudo["overall"]["slots"])
    assert report["divergence"]["human_column"] == "pseudo_tokens"
    text = runner.invoke(app, ["stats", *roots])
    assert text.exit_code == 0, text.output
    for words in ("action_tokens", "per robot_type", "S1-stationary", "human", "Jensen–Shannon", "L0", "R3"):
        assert words in text.stdout


def test_stats_refuses_datasets_without_tokens_and_bad_groups(unified_astribot, roots):
    result = runner.invoke(app, ["stats", str(unified_astribot)])
    assert result.exit_code == 1 and "none of the datasets has a token column" in result.output
    assert runner.invoke(app, ["stats", roots[0], "--by", "camera"]).exit_code == 2


def test_piped_statements_print_csv_and_the_last_needs_no_semicolon(roots, expected):
    child = subprocess.run([sys.executable, "-c", MAIN, "sql", *roots, "--csv"], input=f"SELECT 1 AS one;\n{QUERY}\n",
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines()[:2] == ["one", "1"]
    assert f"{expected[0]['dataset']},{expected[0]['n']},{expected[0]['tokenized']}" in child.stdout


def test_a_folder_that_is_no_dataset_is_refused_without_a_lock_file(roots):
    result = sql(f"{roots[0]}/meta", "SELECT 1")
    assert result.exit_code == 1 and "meta is not a LeRobot dataset: meta/info.json is missing" in result.output
    assert not (Path(roots[0]) / ".meta.clap-lock").exists()

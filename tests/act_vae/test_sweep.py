"""`rate` against the paper's chosen point, and a two-point `run_sweep`: files, agreement, resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from clap_data.act_vae.evaluation import evaluate_act_vae
from clap_data.act_vae.sweep import SweepRow, rate, run_sweep
from clap_data.errors import ClapDataError
from tests.conftest import HOLDOUT

SWEEP = {"num_queries": [4, 2], "codebook_sizes": [8], "steps": 3, "holdout": HOLDOUT, "batch_size": 16, "device": "cpu"}


@pytest.fixture(scope="module")
def sweep(unified_astribot, tmp_path_factory) -> tuple[Path, list[SweepRow]]:
    out = tmp_path_factory.mktemp("sweep_out")
    return out, run_sweep([unified_astribot], out, **SWEEP)


def test_rate_of_the_papers_chosen_point():
    # Nq 16, K 256, MSE 0.0004: R/√MSE = 2/0.02 = 100 (PSNR 40 dB)
    assert rate(16, 256, 0.0004) == pytest.approx(16 * 8 / (32 * 7 * math.log2(100)))
    assert rate(16, 256, 0.0004) == pytest.approx(0.08601, abs=1e-5)
    assert rate(8, 512, 0.0) == 0.0
    assert math.isnan(rate(8, 512, 4.0))
    with pytest.raises(ClapDataError):
        rate(8, 512, -1.0)


def test_rows_are_sorted_and_match_their_checkpoints(sweep, unified_astribot):
    out, rows = sweep
    assert [(r.num_queries, r.codebook_size) for r in rows] == [(2, 8), (4, 8)]
    for row in rows:
        assert Path(row.ckpt) == out / f"nq{row.num_queries}_k{row.codebook_size}"
        report = evaluate_act_vae(Path(row.ckpt), [unified_astribot], holdout=HOLDOUT, device="cpu")
        assert report.num_queries == row.num_queries and report.codebook_size == row.codebook_size
        assert row.mse == report.normalised_mse
        assert row.psnr_db == pytest.approx(20 * math.log10(2 / math.sqrt(row.mse)))
        assert row.rate == pytest.approx(row.num_queries * 3 / (32 * 7 * math.log2(2 / math.sqrt(row.mse))))
        assert row.code_usage == report.code_usage and row.steps == 3


def test_files_agree(sweep):
    out, rows = sweep
    expected = [row.to_dict() for row in rows]
    document = json.loads((out / "sweep.json").read_text())
    assert document["rows"] == expected
    assert document["settings"]["holdout"] == {"mode": "tail", "fraction": 0.25, "key": "provenance"}
    with (out / "sweep.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [{k: type(v)(table[i][k]) for k, v in row.items()} for i, row in enumerate(expected)] == expected
    markdown = (out / "sweep.md").read_text().splitlines()
    assert markdown[0] == "| Nq | K | MSE | PSNR (dB) | rate r | code usage |"
    for row, line in zip(rows, markdown[2:4], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:2] == [str(row.num_queries), str(row.codebook_size)]
        assert float(cells[2]) == pytest.approx(row.mse, rel=1e-3)
        assert float(cells[3]) == pytest.approx(row.psnr_db, abs=0.005)
        assert float(cells[4]) == pytest.approx(row.rate, abs=5e-5)
        assert float(cells[5].rstrip("%")) == pytest.approx(100 * row.code_usage, abs=0.05)
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp-*"))


def test_rerun_reuses_the_checkpoints(sweep, unified_astribot):
    out, rows = sweep
    weights = [p for p in out.glob("nq*_k*/*") if not p.name.startswith(".")]  # not the lock file
    assert len(weights) == 2 * 4  # model.safetensors, config.json, training.json, training_state.pt
    before = {p: p.stat().st_mtime_ns for p in weights}
    progress = []
    again = run_sweep([unified_astribot], out, **SWEEP, on_progress=lambda *args: progress.append(args))
    assert again == rows
    assert {p: p.stat().st_mtime_ns for p in weights} == before
    assert progress == []  # nothing was trained


def test_bad_inputs_fail_before_training(unified_astribot, tmp_path):
    with pytest.raises(ClapDataError, match="at least one Nq"):
        run_sweep([unified_astribot], tmp_path, [], [8], steps=3)
    with pytest.raises(ClapDataError, match="unknown preset"):
        run_sweep([unified_astribot], tmp_path, [2], [8], steps=3, preset="huge")
    with pytest.raises(ClapDataError, match="invalid Act-VAE settings"):
        run_sweep([unified_astribot], tmp_path, [0], [8], steps=3)
    with pytest.raises(ClapDataError, match="steps"):
        run_sweep([unified_astribot], tmp_path, [2], [8], steps=0)
    assert list(tmp_path.iterdir()) == []

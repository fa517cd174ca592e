"""The `seesaw` command as a user meets it: help texts and one-line errors with exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from seesaw_repro import recipes

runner = CliRunner()


@pytest.mark.parametrize(
    "args,expected",
    [
        ([], ["repro", "report", "plan", "config", "data"]),
        (["plan"], ["--preset", "all"]),
        (["config"], ["--preset", "--data-root", "--out", "tools/train.py"]),
        (["repro"], ["--preset", "--work-dir", "--data-root", "--jobs"]),
        (["report"], ["--preset", "--work-dir"]),
        (["data", "synth"], ["--out", "--seed", "LVIS"]),
    ],
)
def test_every_command_explains_itself(args, expected):
    result = runner.invoke(app, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0
    for word in expected:
        assert word in result.output


def _seesaw(*args, cwd):
    script = Path(sys.executable).parent / "seesaw"
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_unknown_table_is_one_line_and_exit_2(tmp_path):
    result = _seesaw("repro", "table99", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "table99" in lines[0] and "table2" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "seesaw-work").exists()


def test_missing_data_root_is_one_line_and_exit_2(tmp_path):
    result = _seesaw("repro", "table2", "--data-root", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "does not exist" in lines[0] and "seesaw data synth" in lines[0]


def test_unknown_preset_is_exit_2(tmp_path):
    result = runner.invoke(
        app, ["report", "table2", "--preset", "huge", "--work-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "unknown preset 'huge'" in result.output


def test_malformed_recipe_names_file_row_and_key(tmp_path, monkeypatch):
    (tmp_path / "table02.toml").write_text(
        'title = "t"\n[defaults]\nsampler = "rfs"\n[[rows]]\nkey = "a"\nmitigaton = true\n'
    )
    monkeypatch.setattr(recipes, "RECIPE_DIR", tmp_path)
    result = runner.invoke(
        app, ["report", "table2", "--work-dir", str(tmp_path)], terminal_width=300
    )
    assert result.exit_code == 2
    assert "table02.toml" in result.output and "mitigaton" in result.output
    assert "row 1 (a)" in result.output


def test_bad_value_in_recipe_is_exit_2(tmp_path, monkeypatch):
    (tmp_path / "table02.toml").write_text(
        'title = "t"\n[[rows]]\nkey = "a"\nsampler = "uniform"\n'
    )
    monkeypatch.setattr(recipes, "RECIPE_DIR", tmp_path)
    result = runner.invoke(app, ["report", "2", "--work-dir", str(tmp_path)], terminal_width=300)
    assert result.exit_code == 2
    assert "sampler = 'uniform'" in result.output


def test_report_before_any_run_marks_rows_planned(tmp_path):
    result = runner.invoke(
        app, ["report", "table2", "--work-dir", str(tmp_path)], terminal_width=250
    )
    assert result.exit_code == 0, result.output
    assert "Table 2" in result.output
    assert result.output.count("planned") >= 6
    assert "26.4" in result.output  # the paper's number for the full Seesaw row


def test_data_synth_writes_an_lvis_dataset(tmp_path):
    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "d"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    for name in ("annotations/lvis_v1_train.json", "annotations/lvis_v1_val.json"):
        assert (tmp_path / "d" / name).exists()
    assert len(list((tmp_path / "d" / "val2017").glob("*.png"))) == 100


def test_plan_all_counts_rows_runs_and_cost(tmp_path):
    result = _seesaw("plan", "all", "--preset", "paper", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    # Tables 1-9: 68 rows, 62 runs; 10-11: 15 rows, 14 runs (q = 1 is in both); 12: 12, 12;
    # 13: 3, 3
    assert summary.startswith("98 table rows and 20 figure rows, 91 distinct runs, estimated ")
    assert "GPU-hours" in summary


def test_config_of_an_unknown_run_is_one_line_and_exit_2(tmp_path):
    result = _seesaw("config", "nosuchrun", cwd=tmp_path)
    assert result.returncode == 2
    assert "no run of preset 'tiny'" in result.stderr and "seesaw plan all" in result.stderr

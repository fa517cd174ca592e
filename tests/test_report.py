"""`seesaw report` in every format, `seesaw collect`, and Figure 3 from real runs."""

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from seesaw_repro.execution import provenance
from seesaw_repro.execution.executors import run_local
from seesaw_repro.execution.runs import RunDir, plan, plan_tables
from seesaw_repro.paper import recipes
from seesaw_repro.paper.recipes import load_table
from seesaw_repro.reporting import plots, results, verdicts

# Two finished runs of Table 2 (tiny preset), as the job leaves them.
DONE = {
    0: {"AP": 12.3, "AP_r": 1.5, "AP_c": 10.25, "AP_f": 20.0, "AP_box": 14.0},
    5: {"AP": 31.0, "AP_r": 9.9, "AP_c": 30.1, "AP_f": 50.5, "AP_box": 33.3},
}


# Where they ran: run 0 here, run 5 (resumed) on a GPU node with another torch.
HERE = provenance.environment(0)
THERE = {**HERE, "torch": "2.1.0+cu121", "cuda": "12.1", "cudnn": 8902, "device": "NVIDIA A100"}
THERE.update(host="gpu-node-7", commit="0" * 40, dirty=True)
ENVIRONMENTS = {0: [HERE], 5: [HERE, THERE]}


@pytest.fixture
def work(tmp_path):
    runs = plan(load_table("table2"), "tiny")
    for index, metrics in DONE.items():
        run_dir = RunDir(tmp_path / "w", runs[index].run_id)
        run_dir.prepare(runs[index], tmp_path / "data")
        run_dir.set_status("running")
        for environment in ENVIRONMENTS[index]:
            run_dir.add_environment(environment)
        (run_dir.path / "metrics.json").write_text(
            json.dumps({"split": "val", "metrics": metrics, "batch": 8})
        )
    RunDir(tmp_path / "w", runs[1].run_id).prepare(runs[1], tmp_path / "data")
    RunDir(tmp_path / "w", runs[1].run_id).set_status("failed", reason="test")
    return tmp_path


def _seesaw(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "seesaw"
    return subprocess.run([str(script), *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_csv_report_carries_the_metrics_json_values(work):
    result = _seesaw("report", "table2", "--format", "csv", "--work-dir", "w", cwd=work)
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False)
    assert list(frame.state) == ["done", "failed", "planned", "planned", "planned", "done"]
    for index, metrics in DONE.items():
        for metric, value in metrics.items():
            assert float(frame[f"{metric}_repro"][index]) == value
    assert float(frame.AP_delta[0]) == pytest.approx(12.3 - 23.7)


def test_markdown_report_lays_out_the_paper_table(work):
    args = ("report", "table2", "--format", "markdown", "--work-dir", "w")
    result = _seesaw(*args, "--view", "absolute", cwd=work)
    assert result.returncode == 0, result.stderr
    absolute = result.stdout.split("**Table 2")[1]  # then the claims
    lines = [line for line in absolute.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 6
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| 12.3 (23.7, -11.4) | 1.5 (n/a) |" in lines[2]
    assert "failed (25.1)" in lines[3]
    assert "31.0 (26.4, +4.6)" in lines[7]
    assert "- Preset 'tiny'" in result.stdout
    # the tiny preset's default: each row against CE, then the paper's claims
    result = _seesaw(*args, cwd=work)
    tables = result.stdout.split("**Table 2")
    effects = [line for line in tables[1].splitlines() if line.startswith("|")]
    assert "| ✓ | ✓ | ✓ | ce | +18.7 n=1 (+2.7) |" in effects[7]
    assert "| 12.3 | 1.5 |" in effects[2]  # CE itself, the baseline
    claims = [line for line in tables[2].splitlines() if line.startswith("|")]
    assert len(claims) == 2 + len(load_table("table2").claims)
    assert "| mf_cf_nla vs ce, AP | +2.7 | +18.7 n=1 | one seed |" in "".join(claims)


def _latex_report(work: Path) -> str:
    out = work / "tables.tex"
    result = _seesaw(
        "report", "all", "--format", "latex", "--out", str(out), "--work-dir", "w", cwd=work
    )
    assert result.returncode == 0, result.stderr
    return out.read_text()


def test_latex_report_of_every_table_has_its_floats_and_columns(work):
    tex = _latex_report(work)
    floats = tex.count(r"\begin{table*}")
    # Tables 1-13 (their effects) and Figures 1, 3 and 4, then the claims of Tables 1-13
    assert floats == tex.count(r"\end{table*}") == tex.count(r"\begin{tabular}") == 16 + 13
    tabulars = r"\\begin\{tabular\}\{([^\n]+)\}\n(.*?)\\end\{tabular\}"
    for spec, body in re.findall(tabulars, tex, re.S):
        columns = len(re.sub(r"p\{[^}]*\}", "p", spec))
        rows = [r for r in body.split("\n") if r.endswith(r"\\")]
        assert rows and all(r.count(" & ") == columns - 1 for r in rows), spec
    assert "+18.7 n=1 (+2.7)" in tex and r"AP\_r" in tex and "±" not in tex


def test_latex_report_of_every_table_compiles(work):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (.ci/run installs texlive-latex-base)")
    tex = _latex_report(work)
    (work / "doc.tex").write_text(
        "\\documentclass{article}\n\\begin{document}\n" + tex + "\\end{document}\n"
    )
    compiled = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert compiled.returncode == 0, compiled.stdout[-2000:]
    assert (work / "doc.pdf").read_bytes().startswith(b"%PDF")


def test_rich_report_of_all_tables_and_an_unknown_format(work):
    result = _seesaw("report", "all", "--work-dir", "w", cwd=work)
    assert result.returncode == 0, result.stderr
    for number in range(1, 10):
        assert f"Table {number}:" in result.stdout
    result = _seesaw("report", "table2", "--format", "docx", cwd=work)
    assert result.returncode == 2 and "unknown --format 'docx'" in result.stderr


def test_rich_report_on_an_80_column_screen_loses_no_column_or_number(work):
    """Cells wrap instead: before, Table 2's MF / CF / NLA columns were squeezed to nothing
    below ~150 columns and the paper's effect was cut from every cell."""
    result = _seesaw(
        "report", "table2", "--work-dir", "w", cwd=work, env={**os.environ, "COLUMNS": "80"}
    )
    assert result.returncode == 0, result.stderr
    effects = result.stdout.split("What the paper says")[0]
    assert all(len(line) <= 80 for line in effects.splitlines())
    assert "┃ MF ┃ CF ┃ NLA ┃" in effects
    assert effects.count("✓") == 1 + 1 + 2 + 1 + 3  # the rows' components
    # the full Seesaw row (DONE[5]) against CE (DONE[0]): its effect and the paper's (+2.7)
    assert "+18.7" in effects and "(+2.7)" in effects


def test_collect_gives_one_tidy_row_per_run_row_and_metric(work):
    result = _seesaw("collect", "--work-dir", "w", "--out", "results/runs", cwd=work)
    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(work / "results" / "runs.parquet")
    assert list(frame.columns) == results.COLUMNS
    pd.testing.assert_frame_equal(
        frame,
        pd.read_csv(work / "results" / "runs.csv", keep_default_na=False, na_values=[""]),
        check_dtype=False,
    )
    done = frame[frame.status == "done"]
    runs = plan(load_table("table2"), "tiny")
    for index, metrics in DONE.items():
        own = done[done.run_id == runs[index].run_id].set_index("metric")
        assert own.value.to_dict() == metrics
        assert set(own.table) == {"table02"} and set(own.split) == {"val"}
    failed = frame[frame.status == "failed"]
    assert len(failed) == 1 and failed.value.isna().all()
    assert failed.environment.isna().all()  # it has no environment.json
    last = done.drop_duplicates("run_id").set_index("run_id")
    assert last.at[runs[0].run_id, "environment"] == provenance.summary(HERE)
    assert last.at[runs[5].run_id, "environment"] == provenance.summary(THERE)
    assert last.at[runs[5].run_id, "commit"] == "0" * 40 + "+dirty"
    assert last.at[runs[5].run_id, "host"] == "gpu-node-7"


def test_a_table_whose_rows_ran_in_other_environments_says_so(work):
    result = _seesaw("report", "table2", "--format", "markdown", "--work-dir", "w", cwd=work)
    assert result.returncode == 0, result.stderr
    note = next(line for line in result.stdout.splitlines() if "environments" in line)
    assert "ran in 2 environments" in note
    assert f"{provenance.summary(HERE)} (rows ce, mf_cf_nla)" in note
    assert f"{provenance.summary(THERE)} (rows mf_cf_nla)" in note
    assert "NVIDIA A100" in provenance.summary(THERE) and "CUDA 12.1" in provenance.summary(THERE)
    for run_dir in (work / "w" / "runs").iterdir():  # all in one environment: no such note
        (run_dir / "environment.json").write_text(json.dumps([HERE]))
    again = _seesaw("report", "table2", "--format", "markdown", "--work-dir", "w", cwd=work)
    assert "environments" not in again.stdout


def test_the_environment_is_this_processs():
    import importlib.metadata
    import platform

    found = provenance.environment(0)
    for name in provenance.PACKAGES:
        assert found[name] == importlib.metadata.version(name)
    assert found["python"] == platform.python_version() and found["device"] == "CPU"
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=provenance.SUITE_SOURCE
    )
    if head.returncode != 0:
        pytest.skip(f"the suite is not a git checkout here: {head.stderr.strip()}")
    assert found["commit"] == head.stdout.strip() and isinstance(found["dirty"], bool)


@pytest.mark.slow  # trains four runs
def test_figures_1_3_and_4_from_table1s_random_sampler_runs(
    tmp_path, quick_data, with_quick_preset
):
    # Figure 4's Mask R-CNN random-sampler panel: CE, EQL, BAGS, Seesaw; its CE and Seesaw
    # runs are Figures 1 and 3's too (Appendix B's models), trained once here for all three.
    runs = [
        r
        for r in plan(load_table("figure4"), with_quick_preset.name)
        if r.rows[0].startswith("figure04:mask_random_")
    ]
    assert len(runs) == 4
    for figure in ("figure1", "figure3"):
        ids = [r.run_id for r in plan(load_table(figure), with_quick_preset.name)]
        assert ids == [r.run_id for r in runs if r.rows[0].endswith(("_ce", "_seesaw"))]
    assert run_local(runs, tmp_path, quick_data, jobs=2) == {r.run_id: "done" for r in runs}
    methods = {r.rows[0].rsplit("_", 1)[1]: RunDir(tmp_path, r.run_id).path for r in runs}
    assert sorted(methods) == ["bags", "ce", "eql", "seesaw"]
    train = quick_data / "annotations" / "lvis_v1_train.json"
    run_dirs = {"CE": methods["ce"], "Seesaw": methods["seesaw"]}

    # Figure 3: the gradient ratios, categories by training instances
    written = plots.plot_gradient_ratios(run_dirs, train, tmp_path / "fig" / "figure3")
    assert [p.suffix for p in written] == [".png", ".pdf"]
    assert written[0].read_bytes().startswith(b"\x89PNG")
    assert written[1].read_bytes().startswith(b"%PDF")
    categories = plots.training_categories(train)
    counts = [c["instance_count"] for c in categories]
    assert counts == sorted(counts, reverse=True)
    stats = json.loads((run_dirs["CE"] / "gradient_stats.json").read_text())
    head = stats["heads"]["roi_head.bbox_head.loss_cls"]
    ratios = plots.gradient_ratios(run_dirs["CE"])
    k = categories[0]["class_index"]
    assert ratios[k] == pytest.approx(head["positive"][k] / head["negative"][k])

    # Figure 1: accuracy on every val ground-truth box
    val = json.loads((quick_data / "annotations" / "lvis_v1_val.json").read_text())
    index = {c["id"]: k for k, c in enumerate(sorted(val["categories"], key=lambda c: c["id"]))}
    expected = [0] * len(index)
    for ann in val["annotations"]:
        expected[index[ann["category_id"]]] += 1
    for run_dir in run_dirs.values():
        found = json.loads((run_dir / "classification_accuracy.json").read_text())
        assert found["total"] == expected
        assert all(0 <= c <= t for c, t in zip(found["correct"], found["total"], strict=True))
    accuracy = plots.group_accuracy(run_dirs["CE"], train)
    assert set(accuracy) == {"r", "c", "f"} and all(0 <= a <= 100 for a in accuracy.values())
    written = plots.plot_tail_accuracy(run_dirs, train, tmp_path / "f1")
    assert written[1].read_bytes().startswith(b"%PDF")

    # Figure 4: each run's own per-category AP
    written = plots.plot_per_category({"Mask R-CNN, random": methods}, train, tmp_path / "f4")
    assert written[0].read_bytes().startswith(b"\x89PNG") and written[0].stat().st_size > 10_000
    for run_dir in methods.values():
        found = plots.per_category_ap(run_dir)
        assert len(found) == 30 and all(-1.0 <= v <= 1.0 for v in found.values())
        segm_ap = json.loads((run_dir / "metrics.json").read_text())["metrics"]["AP"]
        valid = [v for v in found.values() if v > -1]
        assert 100 * sum(valid) / len(valid) == pytest.approx(segm_ap, abs=0.01)


def test_plot_gradients_says_which_run_is_missing(tmp_path):
    result = _seesaw("plot", "gradients", "--work-dir", "w", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "the CE run of Figure 3 (" in result.stderr and "seesaw repro figure3" in result.stderr
    result = _seesaw("plot", "gradients", "--preset", "paper", "--work-dir", "w", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "preset paper has no default data root: give --data-root" in result.stderr


def _figure3_done(work: Path) -> None:
    """Figure 3's two runs done by hand, with gradient statistics over four categories, and
    the train annotations that order them."""
    categories = [
        {"id": k + 1, "frequency": group, "instance_count": count}
        for k, (group, count) in enumerate([("f", 90), ("r", 2), ("c", 20), ("f", 60)])
    ]
    ann = work / "data" / "annotations" / "lvis_v1_train.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps({"categories": categories}))
    for run in plan(load_table("figure3"), "tiny"):
        run_dir = RunDir(work / "w", run.run_id)
        run_dir.prepare(run, work / "data")
        stats = {"positive": [9.0, 1.0, 3.0, 8.0], "negative": [10.0, 4.0, 5.0, 9.0]}
        stats = {"iter": 12, "heads": {plots.BOX_CLASSIFIER: stats}}
        (run_dir.path / "gradient_stats.json").write_text(json.dumps(stats))
        (run_dir.path / "metrics.json").write_text(
            json.dumps({"split": "val", "metrics": DONE[0], "batch": 8})
        )


def _html_report(work: Path, table: str = "all") -> str:
    out = work / "pages" / "report.html"
    out.parent.mkdir(exist_ok=True)
    args = ("report", table, "--format", "html", "--out", str(out), "--work-dir", "w")
    result = _seesaw(*args, "--data-root", "data", cwd=work)
    assert result.returncode == 0, result.stderr
    return out.read_text()


def test_html_report_has_the_summary_tables_verdicts_figures_and_runs(work):
    import base64

    _figure3_done(work)
    # a value from a run folder that would be markup if it were not escaped
    run_dir = RunDir(work / "w", plan(load_table("table2"), "tiny")[0].run_id).path
    (run_dir / "environment.json").write_text(json.dumps([{**HERE, "device": "<b>GPU</b>"}]))
    page = _html_report(work)
    assert "<b>GPU</b>" not in page and "&lt;b&gt;GPU&lt;/b&gt;" in page
    assert page.count("<h2 id=") == 1 + 16 + 1  # summary, Tables 1-13 and Figures 1, 3, 4, runs

    # the summary: Table 2's claims by verdict (one seed for the one claim both of whose rows
    # are done) and its runs done
    summary = page.split('<h2 id="summary">')[1].split("</table>")[0]
    table2 = next(row for row in summary.split("<tr>") if 'href="#table02"' in row)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", table2)
    counts = dict(zip(verdicts.VERDICTS, cells[2:], strict=True))
    assert cells[1] == "2/6" and counts["one seed"] == "1", cells
    assert counts["not run"] == str(len(load_table("table2").claims) - 1)

    # Table 2's effects, each cell classed by its verdict, and its claims
    section = page.split('<h2 id="table02">')[1].split("<h2 ")[0]
    assert '<td class="num v-one-seed">+18.7 n=1 (+2.7)</td>' in section
    assert "all three components achieve 26.4% AP" in section
    assert "failed" in section and "Preset &#39;tiny&#39;" in section

    # Figure 3 drawn from its runs and embedded; Figure 1 (the same runs, without their
    # accuracy on ground-truth boxes here) says why it is not
    figure3 = page.split('<h2 id="figure03">')[1].split("<h2 ")[0]
    (png,) = re.findall(r'src="data:image/png;base64,([^"]+)"', figure3)
    assert base64.b64decode(png).startswith(b"\x89PNG")
    assert "The distribution of the ratio of cumulative gradients" in figure3  # the paper's
    figure1 = page.split('<h2 id="figure01">')[1].split("<h2 ")[0]
    assert "Not drawn: " in figure1 and "has no classification_accuracy.json" in figure1
    assert "data:image" not in figure1

    # the appendix: every run, config links relative to the page that resolve
    appendix = page.split('<h2 id="runs">')[1]
    links = re.findall(r'<a href="([^"]+)">config.py</a>', appendix)
    assert len(links) == 3 + 2  # the run folders: Table 2's three, Figure 3's two
    assert all((work / "pages" / link).is_file() for link in links)
    every = [load_table(n) for n in recipes.known_tables() + recipes.known_figures()]
    assert appendix.count("<tr>") == 1 + len(plan_tables(every, "tiny"))


def test_html_report_shows_in_headless_chromium_without_a_console_error(work):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")

    def console_messages(page: Path) -> list[str]:
        shot = page.with_suffix(".png")
        shown = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--enable-logging=stderr",
                "--window-size=1280,1800",
                f"--screenshot={shot}",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert shot.read_bytes().startswith(b"\x89PNG")
        return [line for line in shown.stderr.splitlines() if ":CONSOLE" in line]

    # the check sees a console error where there is one
    broken = work / "broken.html"
    broken.write_text('<html><body><script>console.error("broken")</script></body></html>')
    assert any('"broken"' in line for line in console_messages(broken))
    _figure3_done(work)
    _html_report(work, "table2")
    assert console_messages(work / "pages" / "report.html") == []

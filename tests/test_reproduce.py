"""``particlesim reproduce``: verdicts, the page, resuming after an interruption, bad names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from particlesim.cli.app import app
from particlesim.reproduce import Claim, Report, ReproductionError, reproduce, verdict


def test_verdicts() -> None:
    assert verdict(0.84, 0.02, 0.84) == "reproduced"
    assert verdict(0.80, 0.05, 0.84) == "within spread"
    assert verdict(0.80, 0.01, 0.84, 0.05) == "within spread"  # the paper's error bar
    assert verdict(0.65, 0.04, 0.84) == "not reproduced"
    assert verdict(0.90, 0.0, 0.84, better="higher") == "reproduced"
    assert verdict(0.80, 0.0, 0.84, tolerance=0.05) == "reproduced"
    assert verdict(float("nan"), 0.0, 0.84) == "not measured"
    with pytest.raises(ValueError, match="verdict must be one of"):
        Claim("x", "1", "1", "fine")  # type: ignore[arg-type]


class Paper:
    """A fake reproduction counting its runs; ``stop`` raises as a Ctrl-C would."""

    def __init__(self, name: str, value: float, stop: bool = False) -> None:
        self.name, self.value, self.stop, self.runs = name, value, stop, 0
        self.title = f"Paper {name}"

    def run(self, out: Path, *, quick: bool, log) -> Report:
        if self.stop:
            raise KeyboardInterrupt
        self.runs += 1
        out.mkdir(parents=True, exist_ok=True)
        (out / "figure.png").write_bytes(b"png")
        return Report(
            paper=self.name,
            title=self.title,
            claims=[
                Claim(
                    "accuracy",
                    "0.9",
                    f"{self.value:.2f}",
                    verdict(self.value, 0, 0.9, tolerance=0.02),
                )
            ],
            command=f"particlesim reproduce {self.name}",
            settings="2 epochs",
            figures=["figure.png"],
        )


def test_an_interrupted_reproduce_resumes_from_the_finished_papers(tmp_path: Path) -> None:
    a, b = Paper("a", 0.91), Paper("b", 0.5, stop=True)
    results, page = tmp_path / "results", tmp_path / "docs" / "reproductions.md"
    with pytest.raises(KeyboardInterrupt):
        reproduce({"a": a, "b": b}, results=results, markdown=page, log=lambda m: None)
    assert a.runs == 1 and (results / "a.json").is_file() and not (results / "b.json").exists()
    b.stop = False
    reports = reproduce({"a": a, "b": b}, results=results, markdown=page, log=lambda m: None)
    assert (a.runs, b.runs) == (1, 1)  # a was kept
    assert [r.paper for r in reports] == ["a", "b"]
    text = page.read_text()
    assert text.index("## Paper a") < text.index("## Paper b")
    assert "| accuracy | 0.9 | 0.91 | **reproduced** |" in text
    assert "| accuracy | 0.9 | 0.50 | **not reproduced** |" in text
    assert "Verdicts: 1 reproduced, 1 not reproduced" in text
    assert "![a: figure](../results/a/figure.png)" in text
    reproduce({"a": a, "b": b}, ["b"], results=results, markdown=page, fresh=True,
              log=lambda m: None)  # fmt: skip
    assert (a.runs, b.runs) == (1, 2)
    assert "## Paper a" in page.read_text()  # the page keeps every finished paper


def test_quick_and_full_reports_never_mix(tmp_path: Path) -> None:
    a = Paper("a", 0.91)
    reproduce({"a": a}, results=tmp_path, markdown=None, quick=True, log=lambda m: None)
    reproduce({"a": a}, results=tmp_path, markdown=None, quick=False, log=lambda m: None)
    assert a.runs == 2
    assert json.loads((tmp_path / "a.json").read_text())["quick"] is False


def test_an_unknown_paper_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ReproductionError, match=r"unknown paper 'wolzcyk'; known: a"):
        reproduce({"a": Paper("a", 1.0)}, ["wolzcyk"], results=tmp_path, markdown=None)
    result = CliRunner().invoke(app, ["reproduce", "nobody", "--results", str(tmp_path)])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert line.startswith("error: unknown paper 'nobody'; known: ") and "wolczyk" in line


def test_a_page_in_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["reproduce", "--quick", "--out", str(tmp_path / "missing" / "page.md")]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().endswith("does not exist")


def test_a_direction_claim_reads_the_welch_interval() -> None:
    from particlesim.reproduce import direction

    text, result, why = direction([0.30, 0.32, 0.31], [0.10, 0.12, 0.11], "higher")
    assert result == "reproduced" and text.startswith("0.31 ± 0.01 vs 0.11 ± 0.01 (n = 3, 3)")
    assert why.startswith("difference +0.2, 95% interval [+0.")
    assert direction([0.30, 0.32, 0.31], [0.10, 0.12, 0.11], "lower")[1] == "not reproduced"
    assert direction([0.1, 0.3, 0.2], [0.15, 0.25, 0.2], "higher")[1] == "within spread"
    assert direction([0.3], [0.1, 0.2], "higher")[1] == "not measured"

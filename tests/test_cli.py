import subprocess
import sys

import pytest

from autodistil.cli import main
from autodistil.nn import SuperBert, SuperBertConfig, save_supernet


def run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_space_and_cost(capsys):
    rc, out, _ = run(["space"], capsys)
    assert rc == 0 and "tiny: layers 2..5 step 1, hidden 64..112 step 16" in out and "256 subnets" in out
    rc, out, _ = run(["space", "--paper", "--space", "base"], capsys)
    assert rc == 0 and "hidden 544..640 step 32" in out and "largest  L12-H640-R4-A12" in out
    rc, out, _ = run(["cost", "7", "160", "3.5", "10"], capsys)
    assert rc == 0 and "paper formula : 0.275 GMACs  6.89M params" in out and "MACs" in out


@pytest.mark.parametrize(
    "args,msg",
    [
        (["cost", "1"], "the following arguments are required: H, R, A"),
        (["cost", "4", "101", "2.5", "7"], "non-integer FFN width 252.5"),
        (["space", "--paper", "--space", "huge"], "unknown subspace ['huge']"),
        (
            [
                "export",
                "--supernet",
                "/nonexistent",
                "--layers",
                "1",
                "--hidden",
                "32",
                "--ffn-ratio",
                "2",
                "--heads",
                "2",
                "--out",
                "x",
            ],
            "supernet folder not found: /nonexistent",
        ),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (
            ["measure", "--table", "/nonexistent.json", "--model", "a=/x", "--out", "o.json"],
            "/nonexistent.json",
        ),
        (["profile", "--stat", "mean", "--out", "t.json"], "stat 'mean' is not allowed"),
        (
            ["profile", "--depths", "3", "--out", "t.json"],
            "depths (3,) must hold at least two distinct depths",
        ),
        (
            ["search", "--supernet", "x", "--reanchor", "--latency-ms", "5", "--out", "o"],
            "--reanchor needs --table",
        ),
        (
            [
                "search",
                "--supernet",
                "x",
                "--table",
                "t.json",
                "--reanchor",
                "--verify-top",
                "2",
                "--latency-ms",
                "5",
                "--out",
                "o",
            ],
            "--reanchor needs --table and no --verify-top",
        ),
        (
            ["search", "--supernet", "x", "--objective", "proxy", "--reanchor", "--out", "o"],
            "--reanchor needs --table",
        ),
    ],
)
def test_bad_arguments_one_line_exit_2(args, msg, capsys):
    rc, _, err = run(args, capsys)
    assert rc == 2
    assert msg in err and len(err.strip().splitlines()) == 1


def test_export_cli(small_space, tmp_path, capsys):
    sb = SuperBert(SuperBertConfig.for_spaces(small_space, vocab_size=200))
    save_supernet(tmp_path / "ck", sb, [small_space])
    rc, out, _ = run(
        [
            "export",
            "--supernet",
            str(tmp_path / "ck"),
            "--layers",
            "2",
            "--hidden",
            "48",
            "--ffn-ratio",
            "2.5",
            "--heads",
            "3",
            "--out",
            str(tmp_path / "s"),
        ],
        capsys,
    )
    assert rc == 0 and (tmp_path / "s" / "config.json").is_file()
    rc, _, err = run(
        [
            "export",
            "--supernet",
            str(tmp_path / "ck"),
            "--layers",
            "9",
            "--hidden",
            "48",
            "--ffn-ratio",
            "2.5",
            "--heads",
            "3",
            "--out",
            str(tmp_path / "s2"),
        ],
        capsys,
    )
    assert rc == 2 and "in none of the checkpoint's spaces" in err


def test_console_script_runs():
    r = subprocess.run(
        [sys.executable, "-m", "autodistil.cli", "cost", "12", "768", "4", "12"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "11.249 GMACs" in r.stdout

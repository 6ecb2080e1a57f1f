"""experiments/students_vs_baselines.py and experiments/student_recipe.py without fine-tuning: the
seed-noise verdicts on known inputs, and the recipe parser's errors."""

import argparse

import pytest

from experiments import student_recipe as recipe
from experiments import students_vs_baselines as svb


def _comparison():
    rows = [
        {"role": "searched", "name": "s", "measured_ms": 9.0, "vs_teacher": 0.23},
        {"role": "first-layers", "name": "f", "measured_ms": 7.4, "vs_teacher": 0.19},
        {"role": "flops-search", "name": "p", "measured_ms": 15.8, "vs_teacher": 0.41},
    ]
    return [{"budget": "0.3", "budget_ms": 11.77, "fraction": 0.3, "rows": rows}]


def _per_seed(scores: dict) -> dict:
    return {
        s: {n: {"score": v[i], "metrics": {"f1": v[i] + 0.05}} for n, v in scores.items()}
        for i, s in enumerate((0, 1, 2))
    }


@pytest.mark.parametrize(
    "searched,first,flops,v_first,v_flops",
    [
        # a clear win over the first layers, a loss to the FLOPs pick
        ([0.78, 0.79, 0.78], [0.70, 0.71, 0.69], [0.80, 0.81, 0.82], "win", "loss"),
        # the mean difference (+0.01) is smaller than the first layers' seed std (0.02): no win
        (
            [0.78, 0.78, 0.78],
            [0.75, 0.79, 0.77],
            [0.78, 0.78, 0.78],
            "tie (within seed noise)",
            "tie (within seed noise)",
        ),
    ],
)
def test_verdict_is_a_win_only_beyond_seed_noise(searched, first, flops, v_first, v_flops):
    out = svb.summarize(_per_seed({"s": searched, "f": first, "p": flops}), _comparison(), teacher_score=0.82)
    b = out["budgets"][0]
    assert b["vs"]["first-layers"]["verdict"] == v_first
    assert b["vs"]["flops-search"]["verdict"] == v_flops
    assert b["roles"]["searched"]["share_of_teacher"] == pytest.approx(sum(searched) / 3 / 0.82)
    assert b["vs"]["first-layers"]["paired_diffs"] == pytest.approx([a - c for a, c in zip(searched, first)])
    md = svb.render(out, "accuracy")
    assert md.count("\n") == 4 and "FLOPs" not in md  # three roles, by their keys, under a two-line header


def test_same_model_in_two_roles_is_not_a_win():
    cmp = _comparison()
    cmp[0]["rows"][2]["name"] = "s"  # the FLOPs search picked the searched student itself
    out = svb.summarize(_per_seed({"s": [0.78, 0.79, 0.80], "f": [0.7, 0.7, 0.7]}), cmp, teacher_score=0.82)
    assert out["budgets"][0]["vs"]["flops-search"]["verdict"] == "same model"


@pytest.mark.parametrize("bad", ["3e-4:1", "x:1:0.5", "3e-4:0:0.5", "3e-4:1:1.5", "-1:1:0.5"])
def test_recipe_parser_names_the_bad_recipe(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="recipe"):
        recipe.parse_recipe(bad)
    assert recipe.parse_recipe("3e-4:2:0.5") == {"lr": 3e-4, "epochs": 2.0, "kd_alpha": 0.5}


def test_recipe_student_folder_lists_what_exists(tmp_path):
    (tmp_path / "students" / "a").mkdir(parents=True)
    (tmp_path / "students" / "a" / "config.json").write_text("{}")
    assert recipe.student_folder(tmp_path, "a") == tmp_path / "students" / "a"
    with pytest.raises(FileNotFoundError, match=r"there are: \['a'\]"):
        recipe.student_folder(tmp_path, "b")

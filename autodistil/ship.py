"""What to ship: per latency budget, the fine-tuned student as a folder that
``AutoModelForSequenceClassification.from_pretrained`` loads (classification head, label names,
tokenizer; the family's plain class where the shape allows), optionally as ONNX checked against
torch, and ``ship/manifest.json`` naming which folder meets which budget."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from .io import atomic_dir, atomic_save, atomic_write_json

ONNX_NAME = "model.onnx"
ONNX_RTOL = 1e-3  # onnxruntime vs torch logits: max |diff| / max(1, max |logit|)


class _Logits(torch.nn.Module):
    def __init__(self, m, token_types: bool):
        super().__init__()
        self.m, self.token_types = m, token_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kw = {"token_type_ids": token_type_ids} if self.token_types else {}
        return self.m(input_ids=input_ids, attention_mask=attention_mask, **kw).logits


def _inputs(tok, texts: list, token_types: bool, seq_len: int) -> dict:
    """texts: one list of strings per text column (two for sentence pairs)."""
    enc = tok(*texts, padding=True, truncation=True, max_length=seq_len, return_tensors="pt")
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])
    return {k: enc[k] if k in enc else torch.zeros_like(enc["input_ids"]) for k in names}


def export_classifier_onnx(folder, texts: list, seq_len: int = 128, opset: int = 17) -> dict:
    """<folder>/model.onnx from a fine-tuned classifier folder (inputs input_ids, attention_mask and,
    where the model takes them, token_type_ids; output logits; dynamic batch and length), then
    onnxruntime's logits on `texts` (one list per text column) checked against torch's. Returns the
    check; raises when they differ by more than ONNX_RTOL."""
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    import autodistil  # noqa: F401  (registers the AutoDistil classes)
    from .finetune.train import takes_token_types

    folder = Path(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).float().eval()
    tok = AutoTokenizer.from_pretrained(folder)
    tt = takes_token_types(model)
    wrap = _Logits(model, tt).eval()
    x = _inputs(tok, texts, tt, seq_len)
    dyn = {k: {0: "batch", 1: "seq"} for k in x}
    path = atomic_save(
        folder / ONNX_NAME,
        lambda p: torch.onnx.export(
            wrap,
            tuple(x.values()),
            p,
            input_names=list(x),
            output_names=["logits"],
            dynamic_axes={**dyn, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        ),
    )
    with torch.no_grad():
        ref = wrap(*x.values()).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}  # an input the model ignores is not in the graph
    got = sess.run(["logits"], {k: v.numpy() for k, v in x.items() if k in names})[0]
    err = float(np.max(np.abs(got - ref)) / max(1.0, float(np.max(np.abs(ref)))))
    check = {
        "file": str(path),
        "examples": len(texts[0]),
        "max_rel_diff": err,
        "tolerance": ONNX_RTOL,
        "inputs": sorted(names),
    }
    if not err <= ONNX_RTOL:
        raise RuntimeError(
            f"ONNX export of {folder}: onnxruntime's logits differ from torch's by {err:.2e} "
            f"(relative; allowed {ONNX_RTOL:g})"
        )
    return check


def _dev_texts(run, n: int = 8) -> list:
    """The first `n` dev examples, one list per text column."""
    from .data.tasks import load_data

    spec, ds = load_data(run.cfg.data)
    rows = ds["validation"].select(range(min(n, len(ds["validation"]))))
    return [list(rows[k]) for k in spec.text_keys]


def ship_students(run) -> dict:
    """ship/<student>/ per budget's chosen student (fine-tuned), ship/manifest.json, ONNX when asked."""
    st, cfg = run.state, run.cfg
    ship = run.out / "ship"
    ft = st["finetune"]
    meas = st.get("measure") or {}
    texts = _dev_texts(run) if cfg.onnx else []
    entries = {}
    for name, s in st["export"]["students"].items():
        src = Path(ft[name]["config"]["out_dir"])

        def build(tmp: Path, src=src, s=s):
            for f in src.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
            meta = Path(s["folder"]) / "autodistil_student.json"
            if meta.is_file():
                shutil.copy2(meta, tmp / meta.name)

        folder = atomic_dir(ship / name, build)
        onnx = export_classifier_onnx(folder, texts, cfg.profile.seq_len) if cfg.onnx else None
        info = (
            json.loads((folder / "autodistil_student.json").read_text())
            if (folder / "autodistil_student.json").is_file()
            else {}
        )
        entries[name] = {
            "folder": str(folder),
            "budgets": s["budgets"],
            "subnet": s["subnet"],
            "model_class": info.get("model_class"),
            "needs_autodistil": info.get("needs_autodistil"),
            "score": ft[name]["score"],
            "headline": ft[name]["headline"],
            "predicted_ms": s["predicted_ms"],
            "measured_ms": (meas.get(name) or {}).get("ms"),
            "onnx": onnx,
        }
    budgets = []
    for label, b in st["search"]["best"].items():
        name = next(n for n, e in entries.items() if label in e["budgets"])
        budgets.append(
            {
                "budget": label,
                "budget_ms": b["budget_ms"],
                "fraction": b["fraction"] if b.get("fraction_given") else None,
                "student": name,
                "folder": f"ship/{name}",
            }
        )
    from .latency.predict import LatencyTable

    sett = LatencyTable.load(st["profile"]["table"]).settings  # the statistic the run's budgets bound
    manifest = {
        "task": ft["teacher"].get("task"),
        "budgets": sorted(budgets, key=lambda b: b["budget_ms"]),
        "students": entries,
        "latency_table": st["profile"]["table"],
        "latency_stat": sett.get("stat", cfg.search.latency_stat),
        "latency_low_pct": sett.get("low_pct", 10.0),
        "measured_here": not run.foreign_table,
    }
    atomic_write_json(ship / "manifest.json", manifest)
    return manifest


def shipped_folders(ship_dir) -> tuple[dict, dict]:
    """(manifest, {student: folder}) of a run's ship/ folder (moved or copied to another machine)."""
    from .io import read_json

    ship_dir = Path(ship_dir)
    manifest = read_json(ship_dir / "manifest.json", "ship manifest")
    folders = {}
    for name in manifest.get("students", {}):
        f = ship_dir / name
        if not (f / "config.json").is_file():
            raise FileNotFoundError(f"shipped student folder missing: {f} (copy the whole ship/ folder)")
        folders[name] = str(f)
    return manifest, folders


def check_manifest_stat(manifest: dict, table) -> str:
    """The short name of the statistic the shipped budgets bound (the manifest's latency_stat; median for
    a manifest from before it was recorded); ValueError when `table` predicts another one (its
    measurements would judge the budgets on a statistic they do not bound)."""
    from .latency.profile import same_stat, stat_label, stat_tag

    want, want_low = manifest.get("latency_stat", "median"), manifest.get("latency_low_pct", 10.0)
    sett = getattr(table, "settings", None) or {}
    have, have_low = sett.get("stat", "median"), sett.get("low_pct", 10.0)
    if not same_stat(want, have, want_low, have_low):
        raise ValueError(
            f"the shipped budgets bound {stat_label(want, want_low)} per call (manifest latency_stat "
            f"{want}), the table predicts {stat_label(have, have_low)} ({have}): measure with a table "
            f"profiled with `autodistil profile --stat {want}`"
        )
    return stat_tag(have, have_low)


def judge_budgets(manifest: dict, res: dict, table) -> list:
    """Each shipped budget judged on this measurement, against the teacher timed in the same rounds:
    a fraction budget on the student's latency over the teacher's; a budget in ms on the student's
    latency at the table's speed (its latency over the teacher's, times the teacher's latency in the
    table), so a machine that runs faster or slower now than when it was profiled moves both alike."""
    from .latency.profile import stat_tag

    sett = getattr(table, "settings", None) or {}
    tag = stat_tag(sett.get("stat", "median"), sett.get("low_pct", 10.0))
    t_now = res["models"]["teacher"]["ms"]
    t_table = (table.meta.get("teacher") or {}).get("ms")
    out = []
    for b in manifest["budgets"]:
        m = res["models"][b["student"]]
        ratio = m["ms"] / t_now
        if b.get("fraction"):
            holds, judged = ratio <= b["fraction"], f"{ratio:.3f} x the teacher <= {b['fraction']:g}"
            at_table = ratio * t_table if t_table else None
        elif t_table:
            at_table = ratio * t_table
            holds = at_table <= b["budget_ms"]
            judged = (
                f"{at_table:.3f} ms at the table's speed ({ratio:.3f} x the teacher's {t_table:.2f} ms) <= "
                f"{b['budget_ms']:g} ms"
            )
        else:
            at_table = None
            holds, judged = m["ms"] <= b["budget_ms"], f"{m['ms']:.3f} ms <= {b['budget_ms']:g} ms"
        out.append(
            {
                **b,
                "measured_ms": m["ms"],
                "noise_sd_ms": m["noise_sd_ms"],
                "teacher_ms_now": t_now,
                "vs_teacher": ratio,
                "ms_at_table_speed": at_table,
                "holds": holds,
                "verdict": f"{'holds' if holds else 'DOES NOT hold'}: {judged} "
                f"(measured {tag} {m['ms']:.3f} ms now)",
            }
        )
    return out

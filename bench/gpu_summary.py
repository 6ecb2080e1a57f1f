"""The verdicts of one `bench/gpu_check.sh OUTDIR` run: OUTDIR/summary.json and summary.md.

    python bench/gpu_summary.py OUTDIR                      # (re)write the summary from what is there
    python bench/gpu_summary.py --merge-junit DST SRC...    # append SRC's test suites to DST
    python bench/gpu_summary.py --import-check              # import every module the GPU parts use
                                                            # with `datasets` and `deepspeed` blocked

Reads (each may be missing: that part is then "not run", with the reason the log gives):
  gpu_check.log          every part's output, and one line per part: "@@part {json}" (name, box_s,
                         seconds, rc, note), "@@facts {json}", "@@backends {json}", "@@imports {json}"
  junit.xml              pytest's JUnit XML of the GPU tests: pass/fail per test file, failing ids
  kernels_gpu.csv        bench_kernels.py: per-shape ratios cuBLAS/ours, SDPA/ours, geometric means,
                         the Triton configs chosen per shape
  supernet_step_gpu.csv  bench_supernet_step.py: tokens/s, GPU-busy share and memory (base, own,
                         extra, peak) per mode vs naive; a graph mode's pool and replays
  latency_gpu.json       bench/gpu_latency.py: its "checks" list ({name, value, target, pass}) if any
Targets (geometric means over shapes; ratios against cuBLAS on a ready bf16 copy of the same
sub-shape and SDPA on the same views and mask): Triton sliced linear >= 0.85x cuBLAS (issue 28),
CUDA sliced linear >= 0.95x cuBLAS, Triton attention fwd+bwd >= 0.80x SDPA at d = 64 (issues 12,
13), CUDA-backend attention >= 0.95x SDPA (issue 28); supernet step >= 1.2x naive tokens/s with
lower extra peak memory for every backend (issues 12, 13); a graph mode (cuda_graphs) >= 1.5x naive
tokens/s with no higher peak memory (base + own + extra) and a GPU-busy share >= 60 % (issue 28).
Standard library only (fast; runs after every part of the check)."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

PART_ORDER = ("facts", "build", "imports", "tests", "kernels", "step", "latency")
LINEAR_TARGETS = {"triton": 0.85, "cuda": 0.95}
# shown beside them, no target: the Triton option that loads fp32 tiles of W (weight_operand("cast"))
LINEAR_EXTRA = ("triton_cast",)
ATTENTION_TARGETS = {"triton": 0.80, "cuda": 0.95}
STEP_TARGET = 1.2
STEP_BACKENDS = ("torch", "triton", "cuda")
GRAPH_TARGET, GRAPH_BUSY_TARGET = 1.5, 0.60
STEP_GRAPH_MODES = ("graphs_cuda", "graphs_triton")
BLOCKED = ("datasets", "deepspeed")
GPU_PART_MODULES = (
    "autodistil",
    "autodistil.ops",
    "autodistil.ops.dispatch",
    "autodistil.ops.shared",
    "autodistil.ops.torch_backend",
    "autodistil.ops.cuda_backend",
    "autodistil.kernels",
    "autodistil.nn",
    "autodistil.nn.teacher_net",
    "autodistil.distill.train",
    "autodistil.distill.losses",
    "autodistil.data.text",
    "autodistil.latency.profile",
    "autodistil.latency.predict",
    "transformers.models.bert.modeling_bert",
    "autodistil.distill.graphs",
    "common",
    "bench_kernels",
    "bench_supernet_step",
    "gpu_latency",
    "conftest",
    "test_kernels",
    "test_superbert",
    "test_cuda_backend",
    "test_cuda_attention",
    "test_mixed_precision",
    "test_graphs",
)
OPTIONAL_MODULES = (
    "gpu_latency",
    "test_cuda_backend",
    "test_cuda_attention",
    "test_mixed_precision",
    "test_graphs",
)  # other owners' files, maybe absent
ROOT = Path(__file__).resolve().parent.parent


# --- small helpers ----------------------------------------------------------------------
def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _num(x):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def geomean(xs):
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def _read_csv(path: Path):
    if not path.is_file():
        return None
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _fmt(x, nd=3):
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


# --- the log ----------------------------------------------------------------------------
def parse_log(path: Path) -> dict:
    """{"parts": {name: record}, "facts": {...}, "backends": {...}, "imports": {...}} from @@ lines."""
    out = {"parts": {}, "facts": {}, "backends": {}, "imports": {}, "source": None}
    if not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("@@"):
            continue
        tag, _, rest = line[2:].partition(" ")
        if tag == "source":  # plain text: "<git describe or 'no git'> sha256 <hash of the sources>"
            out["source"] = rest.strip()
            continue
        try:
            obj = json.loads(rest)
        except json.JSONDecodeError:
            continue
        if tag == "part" and isinstance(obj, dict) and "name" in obj:
            out["parts"][obj["name"]] = obj
        elif tag in ("facts", "backends", "imports") and isinstance(obj, dict):
            out[tag] = obj
    return out


def part_status(rec: dict | None) -> str:
    if rec is None:
        return "not run"
    if rec.get("skipped"):
        return f"not run: {rec['skipped']}"
    rc = rec.get("rc")
    if rc == 0:
        return "ok"
    if rc == 124:
        return f"timed out (box {rec.get('box_s')} s): what it wrote before is used"
    if rc == 137:
        return f"killed after its box ({rec.get('box_s')} s)"
    if rc == 2 and rec.get("name") in ("kernels", "step", "latency"):
        return "no GPU (rc 2)"
    return f"failed (rc {rc})"


# --- tests ------------------------------------------------------------------------------
def _test_file(classname: str, name: str) -> str:
    """pytest's dotted classname (tests.test_kernels[.TestX]) -> tests/test_kernels.py."""
    dotted = classname or name  # a collection error has an empty classname and the module as name
    parts = dotted.split(".")
    for k, p in enumerate(parts):
        if p.startswith("test_") or p == "conftest":
            return "/".join(parts[: k + 1]) + ".py"
    return dotted or "?"


def parse_junit(path: Path) -> dict | None:
    """{"files": {file: {passed, failed, errors, skipped, verdict}}, "failing": [id: message]}."""
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        return {"files": {}, "failing": [], "error": f"junit.xml unreadable: {e}"}
    files: dict = {}
    failing = []
    for tc in root.iter("testcase"):
        if not tc.get("name"):  # a placeholder an interrupted run leaves: no test behind it
            continue
        f = _test_file(tc.get("classname", ""), tc.get("name", ""))
        st = files.setdefault(f, {"passed": 0, "failed": 0, "errors": 0, "skipped": 0})
        kids = {c.tag for c in tc}
        if "failure" in kids or "error" in kids:
            kind = "failure" if "failure" in kids else "error"
            st["failed" if kind == "failure" else "errors"] += 1
            msg = (tc.find(kind).get("message") or "").strip().splitlines()
            failing.append(f"{f}::{tc.get('name')} ({kind}: {msg[0][:200] if msg else ''})")
        elif "skipped" in kids:
            st["skipped"] += 1
        else:
            st["passed"] += 1
    for st in files.values():
        if st["failed"] or st["errors"]:
            st["verdict"] = "fail"
        elif st["passed"]:
            st["verdict"] = "pass"
        else:
            st["verdict"] = "not run (all skipped)"
    return {"files": files, "failing": failing}


def merge_junit(dst: Path, srcs) -> None:
    """Append the <testsuite> elements of srcs to dst (created when missing)."""
    if dst.is_file():
        root = ET.parse(dst).getroot()
        if root.tag != "testsuites":
            new = ET.Element("testsuites")
            new.append(root)
            root = new
    else:
        root = ET.Element("testsuites")
    for s in srcs:
        s = Path(s)
        if not s.is_file():
            continue
        r = ET.parse(s).getroot()
        for suite in [r] if r.tag == "testsuite" else list(r.iter("testsuite")):
            root.append(suite)
    _atomic_write(dst, ET.tostring(root, encoding="unicode"))


# --- benchmarks -------------------------------------------------------------------------
def _key(r) -> tuple:
    """A benchmark shape: its name and (o, i) (a name can cover two sizes, e.g. a space's min and max)."""
    return (r.get("shape"), str(r.get("o")), str(r.get("i")))


def _ms(rows, op, key, impl, col="ms_median"):
    for r in rows:
        if r.get("op") == op and _key(r) == key and r.get("impl") == impl and r.get("status") == "ok":
            return _num(r.get(col))
    return None


def kernel_targets(rows, backends: dict) -> tuple[list, dict]:
    """Targets for the sliced linear and the attention, and per-shape tables. A ratio is reference
    time / ours on the GPU time of CUDA-graph replays (gpu_ms_median) when both sides have it at
    every measured shape, else on the eager do_bench time (which small shapes' CPU launch
    overhead bounds); the detail names which, and gives the other too."""
    targets, tables = [], {}
    for op, ref, goal, label in (
        (
            "sliced_linear_fwd_bwd",
            "cublas_contiguous",
            LINEAR_TARGETS,
            "sliced linear fwd+bwd vs cuBLAS (contiguous copy)",
        ),
        ("attention_fwd_bwd", "torch_sdpa", ATTENTION_TARGETS, "attention fwd+bwd vs SDPA, same mask, d=64"),
    ):
        shapes = list(dict.fromkeys(_key(r) for r in rows or [] if r.get("op") == op))
        table = []
        for sh in shapes:
            r0 = next(r for r in rows if r.get("op") == op and _key(r) == sh)
            ent = {"shape": sh[0], "o": r0.get("o"), "i": r0.get("i")}
            extra = LINEAR_EXTRA if op == "sliced_linear_fwd_bwd" else ()
            impls = [ref, *(f"autodistil_{be}" for be in (*goal, *extra))]
            if op == "sliced_linear_fwd_bwd":
                impls += ["torch_F.linear_on_slice", "cublas_cast_per_call"]
            for im in impls:
                ent[im] = _ms(rows, op, sh, im)
                ent[im + "@gpu"] = _ms(rows, op, sh, im, "gpu_ms_median")
            for be in (*goal, *extra):
                for suf in ("", "@gpu"):
                    a, b = ent[ref + suf], ent[f"autodistil_{be}" + suf]
                    ent[f"ratio_{be}{suf}"] = a / b if a and b else None
                    if op == "sliced_linear_fwd_bwd":
                        fl = ent["torch_F.linear_on_slice" + suf]
                        ent[f"ratio_{be}_vs_F.linear{suf}"] = fl / b if fl and b else None
                        cc = ent["cublas_cast_per_call" + suf]
                        ent[f"ratio_{be}_vs_cast{suf}"] = cc / b if cc and b else None
            if op == "sliced_linear_fwd_bwd":
                ent["triton_config"] = {
                    im: r.get("triton_config", "")
                    for r in rows
                    for im in ("autodistil_triton", "autodistil_triton_cast")
                    if r.get("op") == op and _key(r) == sh and r.get("impl") == im and r.get("triton_config")
                }
            ent["note"] = next(
                (
                    r.get("note", "")
                    for r in rows
                    if r.get("op") == op and _key(r) == sh and r.get("impl") == ref
                ),
                "",
            )
            table.append(ent)
        tables[op] = table
        kind = "linear" if op.startswith("sliced") else "attention"
        for be, g in goal.items():
            t = {
                "name": f"{kind}_{be}",
                "what": f"{be} {label} (geomean of reference time / ours)",
                "target": f">= {g:.2f}x",
                "value": None,
            }
            eager = [e for e in table if e[f"ratio_{be}"] is not None]
            use_gpu = bool(eager) and all(e[f"ratio_{be}@gpu"] is not None for e in eager)
            suf = "@gpu" if use_gpu else ""
            errors = [
                r
                for r in rows or []
                if r.get("op") == op
                and r.get("impl") == f"autodistil_{be}"
                and r.get("status", "ok").startswith("error")
            ]  # "skipped: time budget" is not one
            if rows is None:
                t.update(
                    verdict="not measured", detail="no kernels_gpu.csv (part not run or produced nothing)"
                )
            elif backends.get(be, "ok") != "ok" and not eager:
                t.update(verdict="not measured", detail=f"backend unavailable: {backends[be]}")
            elif not eager:
                t.update(
                    verdict="not measured" if not errors else "fail",
                    detail=(
                        f"{len(errors)} shapes failed: {errors[0]['status']}"
                        if errors
                        else "no shape measured for this backend"
                    ),
                )
            else:
                gm = geomean([e[f"ratio_{be}{suf}"] for e in eager])
                worst = min(eager, key=lambda e: e[f"ratio_{be}{suf}"])
                t["value"] = round(gm, 3)
                t["verdict"] = "pass" if gm >= g and not errors else "fail"
                other = geomean([e[f"ratio_{be}"] for e in eager]) if use_gpu else None
                t["detail"] = (
                    f"{'GPU time (CUDA-graph replay)' if use_gpu else 'eager time (do_bench)'}; "
                    f"{len(eager)} of {len(table)} shapes; worst {worst['shape']} {worst['o']}x{worst['i']} "
                    f"{worst[f'ratio_{be}{suf}']:.2f}x"
                    + (f"; {len(errors)} shapes errored" if errors else "")
                    + (f"; eager (launch-bound) {other:.2f}x" if other else "")
                )
                if op == "sliced_linear_fwd_bwd":
                    vf = geomean([e[f"ratio_{be}_vs_F.linear{suf}"] for e in eager])
                    t["detail"] += f"; vs F.linear on the slice {vf:.2f}x" if vf else ""
                    vc = geomean([e[f"ratio_{be}_vs_cast{suf}"] for e in eager])
                    if vc:
                        t["detail"] += f"; vs cuBLAS with a per-call cast of the fp32 master {vc:.2f}x"
            targets.append(t)
    return targets, tables


def _cell(x) -> str:
    """Text for a Markdown table cell (a '|' in an error message would split the row)."""
    return str(x).replace("|", "\\|").replace("\n", " ")


def _busy(r) -> str:
    """'B of S ms (share)': the GPU's busy time per step against the step's wall time, or ''."""
    b, st, sh = _num(r.get("gpu_busy_ms_per_step")), _num(r.get("step_s")), _num(r.get("gpu_busy_share"))
    if b is None or st is None or sh is None:
        return ""
    return f"{b:.1f} of {1000 * st:.1f} ms ({sh:.2f})"


def _busy_detail(r, naive) -> str:
    ours, base = _busy(r), _busy(naive)
    return f"; GPU busy per step {ours} vs naive {base}" if ours and base else ""


def step_targets(rows, backends: dict) -> list:
    out = []
    ok = {r["mode"]: r for r in rows or [] if r.get("status") == "ok"}
    naive = ok.get("naive")
    for be in STEP_BACKENDS:
        t = {
            "name": f"step_{be}",
            "what": f"supernet step, {be} backend vs naive eager slicing (tokens/s; extra peak memory)",
            "target": f">= {STEP_TARGET:.1f}x and lower extra peak",
            "value": None,
        }
        r = ok.get(be)
        other = next((x for x in rows or [] if x.get("mode") == be), None)
        if rows is None:
            t.update(
                verdict="not measured", detail="no supernet_step_gpu.csv (part not run or produced nothing)"
            )
        elif naive is None:
            t.update(verdict="not measured", detail="the naive baseline was not measured")
        elif r is None:
            why = (
                other.get("status")
                if other
                else (
                    f"backend unavailable: {backends[be]}"
                    if backends.get(be, "ok") != "ok"
                    else "not in the CSV"
                )
            )
            t.update(verdict="fail" if why.startswith("error") else "not measured", detail=why)
        else:
            ratio = _num(r["tokens_per_s"]) / _num(naive["tokens_per_s"])
            m_ours, m_naive = _num(r["extra_peak_mb"]), _num(naive["extra_peak_mb"])
            lower = m_ours is not None and m_naive is not None and m_ours < m_naive
            t["value"] = round(ratio, 3)
            t["verdict"] = "pass" if ratio >= STEP_TARGET and lower else "fail"
            l0, ln = _num(r.get("loss_step0")), _num(naive.get("loss_step0"))
            agree = f"; step-0 loss {l0:.5g} vs naive {ln:.5g}" if l0 is not None and ln is not None else ""
            spread = ""
            if all(
                _num(d.get(k)) for d in (r, naive) for k in ("tokens_per_s_slowest", "tokens_per_s_fastest")
            ):
                # the ratio's range over passes: slowest ours vs fastest naive, and the reverse
                spread = (
                    f" (passes: {_num(r['tokens_per_s_slowest']) / _num(naive['tokens_per_s_fastest']):.2f}-"
                    f"{_num(r['tokens_per_s_fastest']) / _num(naive['tokens_per_s_slowest']):.2f}x)"
                )
            t["detail"] = (
                f"{_num(r['tokens_per_s']):.0f} vs {_num(naive['tokens_per_s']):.0f} tokens/s{spread}; "
                f"extra peak "
                f"{m_ours:.0f} vs {m_naive:.0f} MiB ({'lower' if lower else 'NOT lower'}){agree}"
                f"{_busy_detail(r, naive)}"
            )
        out.append(t)
    return out


def _mem(r) -> str:
    """'peak P MiB (base B + own O + extra E)', or the extra peak alone for a row without the split."""
    pk, b, o, e = (_num(r.get(k)) for k in ("peak_mb", "base_mb", "own_mb", "extra_peak_mb"))
    if pk is None or b is None or o is None or e is None:
        return f"extra peak {_fmt(e, 0)} MiB" if e is not None else ""
    return f"peak {pk:.0f} MiB (base {b:.0f} + own {o:.0f} + extra {e:.0f})"


NO_STEP_CSV = "no supernet_step_gpu.csv (part not run or produced nothing)"


def graph_step_targets(rows) -> list:
    """A graph mode (cuda_graphs) against naive eager slicing: tokens/s, peak memory, GPU-busy share."""
    out = []
    ok = {r["mode"]: r for r in rows or [] if r.get("status") == "ok"}
    naive = ok.get("naive")
    for mode in STEP_GRAPH_MODES:
        be = mode.split("_", 1)[1]
        t = {
            "name": f"step_{mode}",
            "value": None,
            "what": f"supernet step, {be} backend with CUDA graphs vs naive eager slicing "
            f"(tokens/s; peak memory; GPU-busy share)",
            "target": f">= {GRAPH_TARGET:.1f}x, peak no higher, busy >= {GRAPH_BUSY_TARGET:.0%}",
        }
        r = ok.get(mode)
        other = next((x for x in rows or [] if x.get("mode") == mode), None)
        if rows is None:
            t.update(verdict="not measured", detail=NO_STEP_CSV)
        elif naive is None:
            t.update(verdict="not measured", detail="the naive baseline was not measured")
        elif r is None:
            why = other.get("status") if other else "not in the CSV"
            t.update(verdict="fail" if why.startswith("error") else "not measured", detail=why)
        else:
            ratio = _num(r["tokens_per_s"]) / _num(naive["tokens_per_s"])
            pk, pn = _num(r.get("peak_mb")), _num(naive.get("peak_mb"))
            busy = _num(r.get("gpu_busy_share"))
            t["value"] = round(ratio, 3)
            mem_known, busy_known = pk is not None and pn is not None, busy is not None
            lower_mem = mem_known and pk <= pn
            failed = (
                ratio < GRAPH_TARGET
                or (mem_known and not lower_mem)
                or (busy_known and busy < GRAPH_BUSY_TARGET)
            )
            t["verdict"] = "fail" if failed else ("pass" if mem_known and busy_known else "not measured")
            busy_txt = (
                f"GPU busy {busy:.0%} of the step"
                if busy is not None
                else f"GPU busy not measured ({r.get('gpu_busy_error') or 'no profile'})"
            )
            t["detail"] = (
                f"{_num(r['tokens_per_s']):.0f} vs {_num(naive['tokens_per_s']):.0f} tokens/s; "
                f"{_mem(r)} vs naive {_mem(naive)}"
                f" ({'no higher' if lower_mem else 'HIGHER' if mem_known else '?'})"
                f"; {busy_txt}; graphs {r.get('member_graphs', '?')} "
                f"(pool {r.get('graph_pool_mb', '?')} MiB)"
                f", last pass replayed {r.get('last_pass_replayed', '?')}, captured "
                f"{r.get('last_pass_captured', '?')}, eager {r.get('last_pass_eager', '?')}"
            )
        out.append(t)
    return out


def latency_checks(path: Path):
    if not path.is_file():
        return None, []
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return {"error": f"latency_gpu.json unreadable: {e}"}, []
    checks = []
    for c in obj.get("checks", []) if isinstance(obj, dict) else []:
        if isinstance(c, dict) and "name" in c:
            v = c.get("pass")
            checks.append(
                {
                    "name": f"latency_{c['name']}",
                    "what": c.get("what", c["name"]),
                    "target": str(c.get("target", "")),
                    "value": c.get("value"),
                    "verdict": "pass" if v is True else ("fail" if v is False else "not measured"),
                    "detail": str(c.get("detail", "")),
                }
            )
    return obj, checks


# --- the summary ------------------------------------------------------------------------
def summarize(outdir) -> dict:
    outdir = Path(outdir)
    log = parse_log(outdir / "gpu_check.log")
    parts = [
        {
            "name": n,
            "box_s": log["parts"].get(n, {}).get("box_s"),
            "seconds": log["parts"].get(n, {}).get("seconds"),
            "status": part_status(log["parts"].get(n)),
            "note": log["parts"].get(n, {}).get("note", ""),
        }
        for n in PART_ORDER
    ]
    backends = log["backends"]
    tests = parse_junit(outdir / "junit.xml")
    krows = _read_csv(outdir / "kernels_gpu.csv")
    srows = _read_csv(outdir / "supernet_step_gpu.csv")
    targets, tables = kernel_targets(krows, backends)
    targets += step_targets(srows, backends)
    targets += graph_step_targets(srows)
    lat_obj, lat_checks = latency_checks(outdir / "latency_gpu.json")
    targets += lat_checks
    not_run = [f"{p['name']}: {p['status']}" for p in parts if p["status"] != "ok"]
    not_run += [f"{t['name']}: {t['detail']}" for t in targets if t["verdict"] == "not measured"]
    if lat_obj is None:
        not_run.append(f"latency: no latency_gpu.json ({part_status(log['parts'].get('latency'))})")
    for f, st in (tests or {}).get("files", {}).items():
        if st["verdict"].startswith("not run"):
            not_run.append(f"{f}: every test skipped")
    test_verdict = (
        "not run"
        if tests is None or not tests["files"]
        else "fail"
        if tests["failing"] or tests.get("error")
        else "pass"
    )
    failed_parts = [p for p in parts if p["status"].startswith(("failed", "killed"))]
    bad = test_verdict == "fail" or any(t["verdict"] == "fail" for t in targets) or failed_parts
    if log["imports"] and not log["imports"].get("ok", True):
        bad = True
    overall = "fail" if bad else ("incomplete" if not_run or test_verdict != "pass" else "pass")
    b = log["parts"].get("build", {})
    return {
        "outdir": str(outdir),
        "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "overall": overall,
        "source": log["source"],
        "device": log["facts"],
        "backends": backends,
        "imports": log["imports"],
        "parts": parts,
        "build": {
            "seconds": b.get("seconds"),
            "status": part_status(b if b else None),
            "note": b.get("note", ""),
        },
        "tests": {"verdict": test_verdict, **(tests or {"files": {}, "failing": []})},
        "targets": targets,
        "kernel_tables": tables,
        "supernet_step": [r for r in srows or []],
        "latency": lat_obj,
        "not_run": not_run,
        "kernel_rows": [
            {k: r.get(k) for k in ("op", "shape", "o", "i", "impl", "kernels")}
            for r in krows or []
            if r.get("kernels")
        ],
    }


def _pair(e, k, nd=4):
    return f"{_fmt(e.get(k), nd)} / {_fmt(e.get(k + '@gpu'), nd)}"


def to_markdown(s: dict) -> str:
    d = s["device"] or {}
    L = [
        f"# GPU check: {s['overall'].upper()}",
        "",
        f"Device: {d.get('device_name', 'unknown')} (driver {d.get('driver', '?')}, "
        f"CUDA {d.get('cuda', '?')}, "
        f"torch {d.get('torch', '?')}, triton {d.get('triton', '?')}, nvcc {d.get('nvcc', '?')}); "
        f"generated {s['generated_utc']}.",
        "",
    ]
    if s.get("source"):
        L += [f"Sources: {s['source']}", ""]
    if s["backends"]:
        L += ["Backends: " + ", ".join(f"{k}: {v}" for k, v in s["backends"].items()), ""]
    if s["imports"]:
        L += [
            f"Imports with datasets/deepspeed blocked: {'ok' if s['imports'].get('ok') else 'FAILED'} "
            + "; ".join(f"{k}: {v}" for k, v in s["imports"].get("modules", {}).items() if v != "ok"),
            "",
        ]
    L += ["## Parts", "", "| part | box (s) | took (s) | status | note |", "|---|---|---|---|---|"]
    L += [
        f"| {p['name']} | {_fmt(p['box_s'])} | {_fmt(p['seconds'], 1)} | {p['status']} | {p['note']} |"
        for p in s["parts"]
    ]
    t = s["tests"]
    L += [
        "",
        f"## GPU tests: {t['verdict']}",
        "",
        "| file | passed | failed | errors | skipped | verdict |",
        "|---|---|---|---|---|---|",
    ]
    L += [
        f"| {f} | {v['passed']} | {v['failed']} | {v['errors']} | {v['skipped']} | {v['verdict']} |"
        for f, v in t["files"].items()
    ]
    if t["failing"]:
        L += ["", "Failing:", ""] + [f"- `{x}`" for x in t["failing"]]
    L += ["", "## Targets", "", "| target | value | goal | verdict | detail |", "|---|---|---|---|---|"]
    L += [
        f"| {x['what']} | {_fmt(x['value'])} | {x['target']} | {x['verdict']} | {x.get('detail', '')} |"
        for x in s["targets"]
    ]
    lin = s["kernel_tables"].get("sliced_linear_fwd_bwd") or []
    if lin:
        L += [
            "",
            "## Sliced linear fwd+bwd (bf16, 4096 tokens; ms median, eager / GPU-only from a CUDA graph; "
            "ratio = cuBLAS on a ready bf16 copy / ours)",
            "",
            "| shape | o | i | cuBLAS (bf16 copy) | cuBLAS (cast per call) | F.linear slice | "
            "triton (bf16 shadow) | triton (fp32 cast) | cuda | triton ratio | triton cast ratio | "
            "cuda ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        L += [
            f"| {e['shape']} | {e['o']} | {e['i']} | {_pair(e, 'cublas_contiguous')} | "
            f"{_pair(e, 'cublas_cast_per_call')} | {_pair(e, 'torch_F.linear_on_slice')} | "
            f"{_pair(e, 'autodistil_triton')} | {_pair(e, 'autodistil_triton_cast')} | "
            f"{_pair(e, 'autodistil_cuda')} | {_pair(e, 'ratio_triton', 2)} | "
            f"{_pair(e, 'ratio_triton_cast', 2)} | {_pair(e, 'ratio_cuda', 2)} |"
            for e in lin
        ]
        cfgs = [e for e in lin if e.get("triton_config")]
        if cfgs:
            L += [
                "",
                "## Triton configs chosen per shape (BMxBNxBK warps stages, B operand dtype, dW split-K)",
                "",
                "| shape | o | i | triton (bf16 shadow) | triton (fp32 cast) |",
                "|---|---|---|---|---|",
            ]
            tc = lambda e, im: _cell(e["triton_config"].get(im, "-"))  # noqa: E731
            L += [
                f"| {e['shape']} | {e['o']} | {e['i']} | {tc(e, 'autodistil_triton')} | "
                f"{tc(e, 'autodistil_triton_cast')} |"
                for e in cfgs
            ]
    att = s["kernel_tables"].get("attention_fwd_bwd") or []
    if att:
        L += [
            "",
            "## Attention fwd+bwd (bf16, B=32, T=128, d=64, same padding mask; ms median, eager / GPU-only; "
            "ratio = SDPA / ours)",
            "",
            "| shape | SDPA | triton | cuda | triton ratio | cuda ratio | SDPA note |",
            "|---|---|---|---|---|---|---|",
        ]
        L += [
            f"| {e['shape']} | {_pair(e, 'torch_sdpa')} | {_pair(e, 'autodistil_triton')} | "
            f"{_pair(e, 'autodistil_cuda')} | {_pair(e, 'ratio_triton', 2)} | {_pair(e, 'ratio_cuda', 2)} | "
            f"{e.get('note', '')} |"
            for e in att
        ]
    broken = [e for e in s.get("kernel_rows") or [] if e.get("kernels")]
    if broken:
        L += [
            "",
            "## Where the GPU time goes (one profiled call: kernel x launches, device us per call)",
            "",
            "| op | shape | impl | kernels |",
            "|---|---|---|---|",
        ]
        L += [
            f"| {e.get('op')} | {e.get('shape')} | {e.get('impl')} | {_cell(e.get('kernels'))} |"
            for e in broken
        ]
    if s["supernet_step"]:
        rows = s["supernet_step"]
        nv = next((r for r in rows if r.get("mode") == "naive" and r.get("status") == "ok"), None)

        def x_naive(r):
            a, b = _num(r.get("tokens_per_s")), _num(nv.get("tokens_per_s")) if nv else None
            return f"{a / b:.2f}x" if a and b else "-"

        def graphs(r):
            if not r.get("member_graphs"):
                return "-"
            return (
                f"{r.get('member_graphs')} graphs, pool {r.get('graph_pool_mb')} MiB; last pass "
                f"{r.get('last_pass_replayed')}/{r.get('last_pass_captured')}/{r.get('last_pass_eager')}"
            )

        L += [
            "",
            "## Supernet step (sandwich of 4, bf16 autocast, AdamW; modes alternate within rounds)",
            "",
            "| mode | status | tokens/s (median pass) | x naive | slowest-fastest pass | "
            "GPU busy per step of wall (share) | peak MiB (base + own + extra) | "
            "graphs (replayed/captured/eager) | step-0 loss |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        L += [
            f"| {r.get('mode')} | {_cell(r.get('status'))} | {r.get('tokens_per_s', '')} | {x_naive(r)} | "
            f"{_spread(r)} | "
            f"{_cell(_busy(r) or r.get('gpu_busy_error') or '-')} | "
            f"{_peak_cell(r)} | {graphs(r)} | {r.get('loss_step0', '')} |"
            for r in rows
        ]
    if s["not_run"]:
        L += ["", "## Not run / not measured", ""] + [f"- {x}" for x in s["not_run"]]
    return "\n".join(L) + "\n"


def _spread(r) -> str:
    """The slowest-fastest tokens/s of a mode's rounds, or '-'."""
    if not r.get("tokens_per_s_slowest"):
        return "-"
    return f"{r.get('tokens_per_s_slowest')}-{r.get('tokens_per_s_fastest')}"


def _peak_cell(r) -> str:
    pk = _num(r.get("peak_mb"))
    if pk is None:
        if not r.get("extra_peak_mb"):
            return "-"
        return f"extra {r.get('extra_peak_mb', '-')}, base {r.get('base_mb', '-')}"
    return (
        f"{pk:.0f} ({_fmt(_num(r.get('base_mb')), 0)} + {_fmt(_num(r.get('own_mb')), 0)} + "
        f"{_fmt(_num(r.get('extra_peak_mb')), 0)})"
    )


def write_summary(outdir) -> dict:
    s = summarize(outdir)
    _atomic_write(Path(outdir) / "summary.json", json.dumps(s, indent=2, default=str) + "\n")
    _atomic_write(Path(outdir) / "summary.md", to_markdown(s))
    return s


# --- import check -----------------------------------------------------------------------
def import_check(modules=GPU_PART_MODULES, blocked=BLOCKED) -> dict:
    """Import each module with `blocked` made unimportable (sys.modules[name] = None). A module whose
    file is absent (an optional test or bench file) is "absent"; a failure names the importing
    line (file:line) of the repo that pulled a blocked package in."""
    import importlib
    import importlib.util
    import traceback

    for b in blocked:
        sys.modules[b] = None
    for p in (ROOT / "tests", ROOT / "bench", ROOT):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    res = {}
    for m in modules:
        if m in OPTIONAL_MODULES and importlib.util.find_spec(m) is None:
            res[m] = "absent"
            continue
        try:
            importlib.import_module(m)
            res[m] = "ok"
        except KeyboardInterrupt:  # the time box: what was checked stands, the rest is unknown
            res.update({x: "not checked (interrupted)" for x in modules if x not in res})
            break
        except BaseException as e:  # noqa: BLE001  (SystemExit / skips at import count as failures too)
            where = ""
            for fr in traceback.extract_tb(e.__traceback__):
                if str(ROOT) in fr.filename and "importlib" not in fr.filename:
                    where = f"{os.path.relpath(fr.filename, ROOT)}:{fr.lineno}"
            res[m] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}" + (
                f" (at {where})" if where else ""
            )
    return {
        "ok": all(v in ("ok", "absent") or v.startswith("not checked") for v in res.values()),
        "complete": not any(v.startswith("not checked") for v in res.values()),
        "blocked": list(blocked),
        "modules": res,
    }


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--import-check"]:
        r = import_check()
        print("@@imports " + json.dumps(r))
        return 0 if r["ok"] else 1
    if argv[:1] == ["--merge-junit"] and len(argv) >= 3:
        merge_junit(Path(argv[1]), argv[2:])
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print(__doc__)
        return 2
    s = write_summary(argv[0])
    print(f"summary: {s['overall']} -> {Path(argv[0]) / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

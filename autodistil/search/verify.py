"""Budgets verified on the device at search time, and a search that corrects itself from them.

A search picks, among many candidates near a latency budget, those whose *predicted* latency is just under
it; any candidate the table under-predicts is favoured (the winner's curse), and any it over-predicts is
never offered, so a conservative table leaves part of every budget unused. Here the best few candidates
near each budget (by objective, predicted latency up to `slack` above the budget) and a few safer ones
(predicted well under it) are measured end to end with the table's protocol, the teacher in the same
rounds. A correction of the table is fitted on what they measured (search/correct.py), the search runs
again under the corrected table, and the candidates it offers (up to the correction's measured error
above each budget) are measured in another session, with every budget's choice and the candidates
waiting to be confirmed timed again, until the choice no longer changes or after a bounded number of
sessions. A candidate holds a budget when the mean over the sessions it was timed in of (measured
latency + margin) / that session's budget is within 1, the margin the largest of its own noise, the
session's and the cross-session sd; the choice is the best candidate holding over two sessions or more
(one, where none does). Its latest session alone may be over: the record says both. Predicted,
corrected, measured and margin are recorded per session; a budget no measured candidate meets says so.

Baseline (a), the teacher's first k layers, is timed in every session and chosen per budget by the same
rule over all of them: the largest k that holds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from .correct import Correction, fit_correction
from .run import candidate_key, candidate_name


def finalists(
    rows: list,
    budget_ms: float,
    top_k: int = 4,
    slack: float = 0.10,
    safe_k: int = 2,
    safe_frac: float = 0.8,
    score: str = "loss",
) -> list:
    """Session 1's candidates for one budget: the best `top_k` (lowest `score`) with predicted latency <=
    budget x (1 + slack), plus the best `safe_k` with predicted latency <= budget x safe_frac (a fallback)."""
    ranked = sorted(rows, key=lambda r: (r[score], r["latency_ms"]))
    near = [r for r in ranked if r["latency_ms"] <= budget_ms * (1 + slack)][:top_k]
    safe = [r for r in ranked if r["latency_ms"] <= budget_ms * safe_frac][:safe_k]
    out, seen = [], set()
    for r in near + safe:
        k = candidate_key(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def _margin(m: dict, session_sd_pct: float) -> float:
    """The noise margin of one measured model: the larger of its own spread and the session's noise
    (sd % of the statistic) at its latency."""
    own = m.get("noise_sd_ms", float("nan"))
    sess = session_sd_pct / 100 * m["ms"] if math.isfinite(session_sd_pct) else float("nan")
    return max(x for x in (own, sess, 0.0) if math.isfinite(x))


def _use(rows: list) -> float:
    """The mean over sessions of (measured + margin) / that session's budget: within 1, a model holds."""
    return sum((c["measured_ms"] + c["margin_ms"]) / c["budget_ms"] for c in rows) / len(rows)


def _over_sessions(cs: list) -> dict:
    """One model judged in each session it was timed in (rows with measured_ms, margin_ms, budget_ms and
    round, oldest first) as one record: its latest row with `use` (the mean of (measured + margin) /
    budget, within 1 where it holds), `share` (the mean of measured / budget), `shares` and `sessions`."""
    shares = [c["measured_ms"] / c["budget_ms"] for c in cs]
    return {
        **cs[-1],
        "use": _use(cs),
        "share": sum(shares) / len(shares),
        "shares": shares,
        "sessions": [c.get("round", 1) for c in cs],
        "round": cs[-1].get("round", 1),
    }


def choose_first_layers(checked: list, budget_ms: float | None = None) -> dict:
    """Baseline (a) for one budget by the students' rule: among the teacher's first-k-layer cuts
    ({name, layers, measured_ms, margin_ms, budget_ms (of the session it was timed in; else `budget_ms`),
    round}; one row per cut and session), the largest k whose mean over its sessions of (measured latency
    + margin) / budget is within 1. Returns {chosen: its latest row with `use`, `share` and `sessions`, or
    None; message}."""
    by = {}
    for c in checked:
        by.setdefault(c["name"], []).append(
            {"budget_ms": budget_ms, **c} if c.get("budget_ms") is None else c
        )
    if not by:
        return {"chosen": None, "message": "no first-k cut measured"}
    summ = {n: _over_sessions(cs) for n, cs in by.items()}
    ok = [c for c in summ.values() if c["use"] <= 1]
    if ok:
        ch = max(ok, key=lambda c: c["layers"])
        return {"chosen": ch, "message": _holds_text(ch)}
    lo = min(summ.values(), key=lambda c: c["use"])
    return {"chosen": None, "message": f"none fits: the closest, {_holds_text(lo)}"}


def _holds_text(c: dict) -> str:
    """One line on a model judged over its sessions: its latest timing, and its mean use of the budget."""
    one = len(c["sessions"]) == 1
    return (
        f"{c['name']}: measured {c['measured_ms']:.2f} ms + margin {c['margin_ms']:.2f} ms against "
        f"{c['budget_ms']:g} ms in session {c['round']}"
        + ("" if one else f"; over sessions {c['sessions']}")
        + f": {100 * c['use']:.1f}% of the budget with the margin, {100 * c['share']:.1f}% without"
        + ("" if one else " (means)")
    )


# what a budget's history records of the choice after each session
PICK_KEYS = (
    "name",
    "round",
    "predicted_ms",
    "corrected_ms",
    "measured_ms",
    "margin_ms",
    "budget_ms",
    "sessions",
    "shares",
    "use",
)


def offers_under_correction(
    rows: list,
    budget_ms: float,
    corr: Correction,
    current: dict | None,
    measured: set,
    top_k: int = 4,
    score: str = "loss",
    noise_pct: float = float("nan"),
) -> list:
    """The candidates a further session times for one budget under the corrected table: in order of `score`,
    those not yet measured whose corrected prediction is at most the budget x (1 + the correction's measured
    error) and that could beat the `current` choice; up to `top_k`, and the list ends at the first one
    sure to fit (corrected prediction x (1 + error + noise) <= budget). With no current choice and no sure
    one among the first `top_k`, the best sure one is added as a fallback."""
    noise = noise_pct / 100 if isinstance(noise_pct, (int, float)) and math.isfinite(noise_pct) else 0.0
    hi, sure = budget_ms * (1 + corr.err), budget_ms / (1 + corr.err + noise)
    out = []
    for r in sorted(rows, key=lambda r: (r[score], r["latency_ms"])):
        if current is not None and r[score] >= current[score]:
            break  # nothing further down can beat the current choice
        if candidate_name(r) in measured:
            continue
        c = corr.apply(r["space"], r["latency_ms"])
        if c > hi:
            continue
        if len(out) < top_k or (current is None and c <= sure):
            out.append(r)
            if c <= sure:
                break
        elif current is not None:
            break
    return out


def _union(offers: list) -> dict:
    """The candidates of several budgets' offers, once each, by name (first offer first)."""
    out = {}
    for fs in offers:
        for r in fs:
            out.setdefault(candidate_name(r), r)
    return out


class _Verification:
    """The state of one verification across its sessions, and the steps verify_budgets takes: time a
    session (`run_session`), fit a correction on every candidate timed so far, one point each (`fitted`),
    search again and offer what could beat each budget's best holding candidate (`next_offers`), find the
    candidates waiting to be confirmed (`pending`), judge every timed candidate against every budget
    (`judged`, `best_holding`, `choice`), and write each budget's record (`budget_entry`, `result`)."""

    def __init__(
        self,
        rows,
        budgets_ms,
        measure_fn,
        top_k,
        slack,
        safe_k,
        safe_frac,
        score,
        first_layers,
        with_teacher,
        fractions,
        research,
    ):
        self.rows, self.budgets_ms, self.measure_fn = list(rows), list(budgets_ms), measure_fn
        self.top_k, self.slack, self.safe_k, self.safe_frac, self.score = (
            top_k,
            slack,
            safe_k,
            safe_frac,
            score,
        )
        self.first_layers, self.with_teacher = first_layers, with_teacher
        self.fractions, self.research = fractions, research
        self.nb = len(budgets_ms)
        self.extra = [*first_layers, *(["teacher"] if with_teacher else [])]
        self.sessions, self.history = [], [[] for _ in budgets_ms]
        self.timed = {}  # candidate name -> [(session index, {"ms", "noise_sd_ms"}), ...]
        self.rowof, self.corrected_of = {}, {}
        self.cut_timed = {}  # first-k cut name -> [(session index, {"ms", "noise_sd_ms"}), ...]

    # --- judging ---------------------------------------------------------------------------------------
    def cross_sd(self) -> float:
        """The sd (a fraction) of a model's latency relative to its session's speed (the teacher, else the
        anchor) from one session to the next, from the candidates timed in more than one session."""
        ss = self.sessions
        d = [
            math.log((q["ms"] / ss[u]["speed"]) / (m["ms"] / ss[s]["speed"]))
            for ts in self.timed.values()
            for (s, m), (u, q) in zip(ts, ts[1:])
        ]
        return math.sqrt(sum(x * x for x in d) / (2 * len(d))) if d else float("nan")

    def judged(self, n: str, i: int, x: float) -> list:
        """Candidate n judged against budget i in every session it was timed in (margin: its noise, the
        session's and the cross-session sd `x`)."""
        out = []
        for s, m in self.timed[n]:
            sd = max((v for v in (self.sessions[s]["sd"], 100 * x) if math.isfinite(v)), default=float("nan"))
            margin, b = _margin(m, sd), self.sessions[s]["budgets"][i]
            out.append(
                {
                    **self.rowof[n],
                    "name": n,
                    "predicted_ms": self.rowof[n]["latency_ms"],
                    "corrected_ms": self.corrected_of[n],
                    "measured_ms": m["ms"],
                    "margin_ms": margin,
                    "budget_ms": b,
                    "holds": m["ms"] + margin <= b,
                    "round": s + 1,
                }
            )
        return out

    def judged_cuts(self, i: int, x: float) -> list:
        """The teacher's first-k cuts judged against budget i in every session (as `judged`)."""
        out = []
        for n, k in sorted(self.first_layers.items(), key=lambda kv: kv[1]):
            for s, m in self.cut_timed.get(n, []):
                sd = max(
                    (v for v in (self.sessions[s]["sd"], 100 * x) if math.isfinite(v)), default=float("nan")
                )
                out.append(
                    {
                        "name": n,
                        "layers": k,
                        "measured_ms": m["ms"],
                        "margin_ms": _margin(m, sd),
                        "budget_ms": self.sessions[s]["budgets"][i],
                        "round": s + 1,
                    }
                )
        return out

    def best_holding(self, i: int, confirmed: bool = False):
        """The best candidate (by `score`) that holds budget i over the sessions it was timed in (with
        `confirmed`, among those timed in two sessions or more); its record is its latest session's, with
        `use` the mean of (measured + margin) / budget over its sessions (<= 1) and `share` the mean of
        measured / budget."""
        x, ok = self.cross_sd(), []
        for n in self.timed:
            cs = self.judged(n, i, x)
            if len(cs) < 2 and confirmed:
                continue
            # over the sessions it was timed in: the mean of (measured + margin) / budget within 1 (its
            # latest session alone may be over: `holds` stays that session's verdict)
            r = _over_sessions(cs)
            if r["use"] <= 1:
                ok.append(r)
        return min(ok, key=lambda c: (c[self.score], c["share"])) if ok else None

    def choice(self, i: int):
        """Budget i's choice: the best candidate confirmed in two sessions or more, if one holds."""
        return self.best_holding(i, confirmed=True) or self.best_holding(i)

    # --- sessions --------------------------------------------------------------------------------------
    def _session_budgets(self, teacher_ms):
        """This session's budgets: the fractions of the teacher timed in it, else the last session's."""
        if self.fractions is not None and teacher_ms:
            return [round(f * teacher_ms, 3) for f in self.fractions]
        return list(self.sessions[-1]["budgets"]) if self.sessions else list(self.budgets_ms)

    def run_session(self, cands: dict, corr, offered: list) -> None:
        """Time `cands` ({name: row}) with the extra models in one session; record it and each budget's
        choice after it."""
        rnd = len(self.sessions) + 1
        meas = self.measure_fn(list(cands.values()), list(self.extra))
        sd = meas.get("noise", {}).get("sd_pct", float("nan"))
        if self.sessions:  # margins no smaller than session 1's noise: a few models estimate it poorly
            sd = max((x for x in (sd, self.sessions[0]["sd"]) if math.isfinite(x)), default=float("nan"))
        t = meas["models"].get("teacher", {}).get("ms") if self.with_teacher else None
        if self.with_teacher and not (isinstance(t, (int, float)) and t > 0):
            # the teacher is every session's speed: an anchor drift (about 1) in its place would mix units
            raise ValueError(f"verification session {rnd} returned no teacher timing (got {t!r})")
        budgets = self._session_budgets(t)
        drift = meas.get("drift", float("nan"))
        ok = isinstance(drift, (int, float)) and math.isfinite(drift) and drift > 0
        for n in self.first_layers:
            self.cut_timed.setdefault(n, []).append((len(self.sessions), meas["models"][n]))
        for n, r in cands.items():
            self.rowof.setdefault(n, r)
            self.corrected_of.setdefault(
                n, corr.apply(r["space"], r["latency_ms"]) if corr is not None else None
            )
            self.timed.setdefault(n, []).append((len(self.sessions), meas["models"][n]))
        offered_names = {candidate_name(r) for o in offered for r in o}
        self.sessions.append(
            {
                "meas": meas,
                "sd": sd,
                "budgets": budgets,
                "teacher_ms": t,
                "speed": t or (drift if ok else 1.0),
                "correction": corr,
                "retimed": sorted(set(cands) - offered_names),
                "offered": [[candidate_name(r) for r in o] for o in offered],
            }
        )
        self._record_choices(rnd, budgets, corr)

    def _record_choices(self, rnd: int, budgets: list, corr) -> None:
        """Each budget's history gains this session: its budget, correction, offers and choice so far."""
        for i in range(self.nb):
            ch, best = self.choice(i), self.best_holding(i)
            self.history[i].append(
                {
                    "round": rnd,
                    "budget_ms": budgets[i],
                    "correction": None if corr is None else corr.describe(),
                    "offered": self.sessions[-1]["offered"][i],
                    "pick": None if ch is None else {k: ch[k] for k in PICK_KEYS},
                    "best_unconfirmed": None
                    if best is None or (ch and best["name"] == ch["name"])
                    else best["name"],
                    "share": None if ch is None else ch["share"],
                    "cross_session_sd_pct": 100 * self.cross_sd(),
                }
            )

    def fitted(self) -> Correction:
        """The table's correction fitted on every candidate timed so far: one point per candidate, the
        geometric mean of its timings each brought to the latest session's speed (a candidate timed in
        several sessions counts once, so leave-one-out leaves out a candidate, not one of its timings)."""
        last = self.sessions[-1]
        pts = []
        for n, ts in self.timed.items():
            logs = [math.log(m["ms"] * last["speed"] / self.sessions[s]["speed"]) for s, m in ts]
            pts.append((self.rowof[n]["space"], self.rowof[n]["latency_ms"], math.exp(sum(logs) / len(logs))))
        return fit_correction(pts, last["sd"], default_err=self.slack)

    def first_offers(self) -> list:
        """Session 1's candidates per budget: its finalists under the table's predictions."""
        return [
            finalists(self.rows, b, self.top_k, self.slack, self.safe_k, self.safe_frac, self.score)
            for b in self.budgets_ms
        ]

    def next_offers(self, corr: Correction) -> list:
        """Per budget, what a further session times under the corrected table: `research` (when given)
        first adds candidates up to the corrected limits, then `offers_under_correction` against each
        budget's best holding pick."""
        budgets = self.sessions[-1]["budgets"]
        if self.research is not None:
            spaces = sorted({r["space"] for r in self.rows})
            limits = {s: [corr.limit(s, b * (1 + corr.err)) for b in budgets] for s in spaces}
            known = {candidate_name(r): r for r in self.rows}
            for r in self.research(limits):
                known.setdefault(candidate_name(r), r)
            self.rows = list(known.values())
        picks = [self.best_holding(i) for i in range(self.nb)]  # confirmed or not: what a new one must beat
        return [
            offers_under_correction(
                self.rows, b, corr, picks[i], set(self.timed), self.top_k, self.score, self.sessions[-1]["sd"]
            )
            for i, b in enumerate(budgets)
        ]

    def pending(self, i: int, ch) -> list:
        """Budget i's candidates timed in one session only that hold it and beat its choice `ch` (by
        score): the best `top_k` of them are timed again, so that one can be confirmed and chosen."""
        x, out = self.cross_sd(), []
        for n, ts in self.timed.items():
            if len(ts) == 1 and (ch is None or self.rowof[n][self.score] < ch[self.score]):
                if _use(self.judged(n, i, x)) <= 1:
                    out.append((self.rowof[n][self.score], n))
        return [n for _, n in sorted(out)[: self.top_k]]

    def run(self, rounds: int) -> None:
        """Session 1, then corrected sessions, each timing the new offers (none in the last allowed
        session: a candidate timed there once could not be confirmed), every budget's choice again and the
        candidates waiting to be confirmed (`pending`). Stops when there is nothing new, pending or
        unconfirmed, when a session leaves every choice unchanged with nothing pending, or after `rounds`
        sessions."""
        offer1 = self.first_offers()
        union = _union(offer1)
        if not (self.budgets_ms and (union or self.extra)):
            return
        self.run_session(union, None, offer1)
        while len(self.sessions) < rounds:
            corr = self.fitted()
            choices = [self.choice(i) for i in range(self.nb)]
            last = len(self.sessions) + 1 == rounds
            offered = [[] for _ in range(self.nb)] if last else self.next_offers(corr)
            union = _union(offered)
            pend = [n for i in range(self.nb) for n in self.pending(i, choices[i])]
            confirmed = all(c is None or len(self.timed[c["name"]]) >= 2 for c in choices)
            if not union and not pend and confirmed:
                break
            # every budget's choice is timed again (judged over more than one session), and so is every
            # candidate waiting to be confirmed
            retime = {n: self.rowof[n] for n in [*(c["name"] for c in choices if c), *pend]}
            self.run_session({**union, **retime}, corr, offered)
            after = [self.choice(i) for i in range(self.nb)]
            if [c and c["name"] for c in after] == [c and c["name"] for c in choices] and not any(
                self.pending(i, after[i]) for i in range(self.nb)
            ):
                break

    # --- results ---------------------------------------------------------------------------------------
    def budget_entry(self, i: int, x: float) -> dict:
        """Budget i's record: its choice (judged with cross-session sd `x`), every timing of every
        candidate, its history per session, a message, and baseline (a) chosen by the same rule over the
        sessions its cuts were timed in (all of them)."""
        ch = self.choice(i)
        checked = [c for n in self.timed for c in self.judged(n, i, x)]
        rnd = ch["round"] if ch is not None else 1
        sess = self.sessions[rnd - 1] if self.sessions else None
        b = sess["budgets"][i] if sess else self.budgets_ms[i]  # of the last session its choice was timed in
        entry = {
            "budget_ms": b,
            "requested_ms": self.budgets_ms[i],
            "fraction": None if self.fractions is None else self.fractions[i],
            "round": rnd,
            "met": ch is not None,
            "finalists": checked,
            "rounds": self.history[i],
        }
        if ch is not None:
            entry["chosen"] = ch
            entry["message"] = (
                f"predicted {ch['predicted_ms']:.2f} ms"
                + (f", corrected {ch['corrected_ms']:.2f} ms" if ch["corrected_ms"] else "")
                + "; "
                + _holds_text(ch)
            )
        elif checked:
            # the closest by the rule a choice is judged by: the mean over its sessions
            best = min((_over_sessions(self.judged(n, i, x)) for n in self.timed), key=lambda c: c["use"])
            entry["message"] = (
                f"no measured candidate holds {b:g} ms: the closest of {len(self.timed)} measured, "
                + _holds_text(best)
            )
        else:
            entry["message"] = (
                f"no candidate predicted within {b:g} ms x {1 + self.slack:g}: nothing to measure"
            )
        if self.first_layers and self.sessions:
            cuts = self.judged_cuts(i, x)
            entry["first_layers"] = {
                **choose_first_layers(cuts),
                "checked": cuts,
                "round": len(self.sessions),
            }
        return entry

    def result(self) -> dict:
        """What verify_budgets returns (see its docstring)."""
        x_final = self.cross_sd()
        ss = self.sessions
        summ = lambda m: {k: v for k, v in m.items() if k not in ("models", "timings")}  # noqa: E731
        summaries = [
            {
                **summ(s["meas"]),
                "round": j + 1,
                "teacher_ms": s["teacher_ms"],
                "budgets_ms": s["budgets"],
                "budgets_moved": s["budgets"] != list(self.budgets_ms),
                "noise_sd_pct_used": s["sd"],
                "correction": None if s["correction"] is None else s["correction"].to_dict(),
                "offered": s["offered"],
                "retimed": s["retimed"],
                "models_timed": len(s["meas"].get("models", {})),
            }
            for j, s in enumerate(ss)
        ]
        return {
            "budgets": [self.budget_entry(i, x_final) for i in range(self.nb)],
            "teacher_ms": ss[0]["teacher_ms"] if ss else None,
            "measurement": summ(ss[0]["meas"]) if ss else {"noise": {"sd_pct": float("nan")}},
            "sessions": summaries,
            "second_round": summaries[1] if len(summaries) > 1 else None,
            "cross_session_sd_pct": 100 * x_final,
            "correction": self.fitted().to_dict() if self.timed else None,
            "measured": ss[0]["meas"].get("models", {}) if ss else {},
            "measured_by_session": [s["meas"].get("models", {}) for s in ss],
        }


def verify_budgets(
    rows: list,
    budgets_ms: list,
    measure_fn: Callable[[list, list], dict],
    top_k: int = 4,
    slack: float = 0.10,
    safe_k: int = 2,
    safe_frac: float = 0.8,
    score: str = "loss",
    first_layers: dict | None = None,
    with_teacher: bool = False,
    fractions: list | None = None,
    rounds: int = 4,
    research: Callable[[dict], list] | None = None,
) -> dict:
    """measure_fn(candidate rows, extra names) -> {"models": {name: {"ms", "noise_sd_ms"}},
    "noise": {"sd_pct"}, "drift", ...}: one interleaved session of the candidates given and the extra models
    named: "teacher" (`with_teacher`) and the teacher's first-k-layer cuts of `first_layers` {name: k}
    (baseline (a)), timed in every session. Every measured candidate is judged against every budget of its
    session.

    Session 1 times each budget's `finalists` under the table's predictions. After each session a correction
    (search/correct.py) is fitted on every candidate timed so far, one point each (the geometric mean of its
    timings, each brought to the latest session's speed: the teacher timed there, else the anchor), and the
    next session times what `offers_under_correction` gives per budget (the search again under the corrected
    table; `research`, when given, evaluates candidates up to the corrected limits first: {space:
    [predicted-ms limit per budget]} -> more rows; nothing new in the last allowed session) together with
    every budget's current choice and the best `top_k` candidates per budget that held once and beat it
    (`pending`), timed again. A candidate holds a budget when the mean over the sessions it was timed in of
    (measured latency + margin) / that session's budget is within 1 (its latest session alone may be over:
    `holds` is that session's verdict, `use` the mean); the margin is the
    largest of its own noise, the session's (never below session 1's) and the cross-session sd: how much a
    model's latency relative to its session's speed moves from one session to the next, measured on the
    candidates timed twice or more (a later session, such as the report's, is one draw from that spread).
    The choice is the best candidate holding over two sessions or more (the best holding in one only where
    none does); its share of the budget is the mean over its sessions. Sessions stop when nothing new is
    offered, nothing waits to be confirmed and every choice has been timed in two sessions, when a session
    leaves every choice unchanged with nothing waiting, or after `rounds` sessions.

    `fractions` (one per budget, with `with_teacher`): the budgets are those fractions of the teacher's
    latency measured in each session; `budgets_ms` only picks session 1's finalists.

    Returns {"budgets": [per budget: budget_ms (of the last session its choice was timed in), requested_ms,
    fraction, round, met, chosen (row + predicted/corrected/measured/margin/budget/round of its last
    session, share, shares and sessions), finalists (every timing of every candidate, judged), rounds (per
    session: the correction, the candidates offered, the choice so far and its share of the budget), message,
    first_layers (when asked: chosen, message, checked, round)], "teacher_ms" (session 1), "measurement"
    (session 1 less its per-model details), "sessions" (each session's summary, its budgets, teacher,
    correction, offers and the choices timed again), "second_round" (sessions[1] or None),
    "cross_session_sd_pct", "correction" (fitted on every candidate timed, at the end), "measured"
    (session 1's per-model details) and "measured_by_session"}."""
    if fractions is not None and (not with_teacher or len(fractions) != len(budgets_ms)):
        raise ValueError(
            f"fractions {fractions} need with_teacher=True and one fraction per budget "
            f"({len(budgets_ms)} budgets)"
        )
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1 (verification sessions at most)")
    v = _Verification(
        rows,
        budgets_ms,
        measure_fn,
        top_k,
        slack,
        safe_k,
        safe_frac,
        score,
        dict(first_layers or {}),
        with_teacher,
        fractions,
        research,
    )
    v.run(rounds)
    return v.result()


def measure_candidates(
    rows: list,
    nets_by_space: dict,
    table_path,
    work,
    rounds: int | None = None,
    extra: dict | None = None,
    out_name: str = "verify_measure.json",
) -> dict:
    """Export candidate rows from their supernets and time them end to end in a fresh process
    (`autodistil measure`, the table's protocol and anchor), in one session with `extra` models
    ({name: folder}, measured as they are, or a function writing the folder at a given path); the
    exported folders are removed after."""
    import shutil
    import tempfile
    from ..export import export_subnet
    from ..latency.run_measure import measure_in_subprocess
    from ..space import SubnetConfig

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="verify-", dir=work))
    try:
        folders = {}
        for r in rows:
            cfg = SubnetConfig(r["layers"], r["hidden"], r["ffn_ratio"], r["heads"])
            folders[candidate_name(r)] = export_subnet(
                nets_by_space[r["space"]], cfg, tmp / candidate_name(r)
            )
        for name, src in (extra or {}).items():
            if name in folders:
                raise ValueError(f"extra model name {name!r} clashes with a candidate's")
            folders[name] = src(tmp / name) if callable(src) else src
        return measure_in_subprocess(table_path, folders, work / out_name, rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def first_layer_name(k: int) -> str:
    """The name (and export folder) of baseline (a) with k layers."""
    return f"teacher-first{k}"


def verify_search(
    candidates: list,
    budgets_ms: list,
    nets,
    table_path,
    out_dir,
    top_k: int = 4,
    teacher=None,
    first_layers=(),
    rounds: int = 4,
    fractions: list | None = None,
    research: Callable[[dict], list] | None = None,
) -> dict:
    """The search-time check both `autodistil search --verify-top` and `autodistil run` use: measure the
    finalists of each budget end to end in fresh processes (work files in OUT/verify), correct the table
    from them and verify again for up to `rounds` sessions (verify_budgets), and write OUT/verified.json.
    nets: (model, spaces, meta) as the search loaded them. With `teacher` (a Hugging Face folder) the
    teacher is timed in every session (with `fractions` the budgets are those fractions of it), and for
    each k in `first_layers` its first k layers, cut with export.export_first_layers, are timed and chosen
    per budget by the students' rule (baseline (a)). `research`: see verify_budgets."""
    from ..export import export_first_layers
    from ..io import atomic_write_json

    out_dir = Path(out_dir)
    by_space = {spaces[0].name: model for model, spaces, _ in nets}
    if (first_layers or fractions is not None) and teacher is None:
        raise ValueError("first_layers and fractions need the teacher folder")
    cuts = {first_layer_name(k): k for k in first_layers}
    extra = {n: (lambda p, k=k: export_first_layers(teacher, k, p)) for n, k in cuts.items()}
    if teacher is not None:
        extra["teacher"] = str(teacher)
    calls = []

    def measure(rows, names):
        calls.append(len(rows))
        return measure_candidates(
            rows,
            by_space,
            table_path,
            out_dir / "verify",
            extra={n: extra[n] for n in names},
            out_name=f"verify_measure{len(calls)}.json",
        )

    ver = verify_budgets(
        candidates,
        budgets_ms,
        measure,
        top_k=top_k,
        first_layers=cuts,
        rounds=rounds,
        with_teacher=teacher is not None,
        fractions=fractions,
        research=research,
    )
    atomic_write_json(out_dir / "verified.json", ver)
    return ver

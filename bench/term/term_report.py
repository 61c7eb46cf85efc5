"""bench/term's tables: every run's rounds, the strategies' mean curves, and the issue's targets."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench.active_learning.summary import labels_to_match
from habla_ls.term import gate_record, read_log

# The gate's regression tolerance (training/gate.py): a slice fails beyond max(5 % of its WER, 0.005).
TOLERANCE, FLOOR = 0.05, 0.005
TARGET_LABELS = 0.50  # the default strategy needs at most half of random's labels to reach random's last WER
TARGET_ACCENT, TARGET_STANDARD = 0.50, 1.02  # last version vs whisper-base, mean of the seeds
STANDARD_SETS = ("standard", "standard-espeak")
MALE = "kokoro:jm_kumo"
STANDARD_VERDICTS = "standard-vs-replaced.json"  # written by standard_check.py


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def summarise(work: Path, runs: list[str], schedule: list[int]) -> dict[str, Any]:
    """What every run's ``reports/term.jsonl`` and held-out scores say."""
    out: dict[str, Any] = {"schedule": schedule, "runs": {}, "groups": {}}
    base_scores = None
    for run in runs:
        home = work / run.replace(":", "-")
        records = read_log(home)
        scores_path = home / "held-out-scores.json"
        scores = json.loads(scores_path.read_text()) if scores_path.is_file() else {}
        # standard_check.py's verdicts (the gate's own rule on every promoted pair), where it has run.
        verdicts_path = home / STANDARD_VERDICTS
        verdicts = {v["round"]: v["slices"] for v in json.loads(verdicts_path.read_text())} if verdicts_path.is_file() else {}
        base = next((v for v in scores if v.startswith("whisper-base")), None)
        if base and base_scores is None:
            base_scores = scores[base]
        rows = []
        for r in records:
            held = (r.get("extra") or {}).get("held_out") or {}
            replaced = scores.get(r.get("served_before") or "") if r.get("outcome") == "promoted" else None
            rows.append({
                "round": r["round"], "corrections": r["corrections"], "outcome": r["outcome"],
                "served": r.get("served_after"), "candidate": r.get("candidate"),
                "gate": _gate(home, r), "finish_seconds": r.get("finish_seconds"),
                "steps": {s["step"]: s["duration"] for s in r.get("steps") or []},
                "held_out": held,
                "candidate_held_out": (r.get("extra") or {}).get("candidate_held_out"),
                "standard_vs_replaced": None if not replaced else {
                    name: {"before": replaced.get(name), "after": held.get(name)} for name in (*STANDARD_SETS, f"standard:{MALE}")
                },
                "standard_gate_rule": verdicts.get(r["round"]) if r.get("outcome") == "promoted" else None,
            })
        out["runs"][run] = rows
        start, strategy, _seed = run.split(":")
        out["groups"].setdefault(f"{start}:{strategy}", []).append(run)
    out["base"] = base_scores
    out["targets"] = targets(out)
    return out


def _gate(home: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    """The record's gate decision; a record written before records kept the test split's size is read again
    from the gate's report in the run's ``reports/`` (where it still is)."""
    gate = record.get("gate")
    if gate and any(c.get("name") == "test" and c.get("clips") is None for c in gate.get("conditions") or []):
        return gate_record(home / "reports", record.get("candidate"), record.get("served_before")) or gate
    return gate


def _curve(rows: list[dict[str, Any]], base: dict[str, Any], metric: str) -> list[tuple[float, float]]:
    return [(0.0, base[metric])] + [(float(r["corrections"]), r["held_out"][metric]) for r in rows if metric in r["held_out"]]


def mean_curve(summary: dict[str, Any], group: str, metric: str = "accent") -> list[tuple[float, float]]:
    """Per scheduled round, the mean over the group's seeds that reached it (only rounds every seed reached)."""
    base = summary["base"]
    runs = [summary["runs"][run] for run in summary["groups"].get(group, [])]
    if not base or not runs:
        return []
    points = [(0.0, base[metric])]
    for index, corrections in enumerate(summary["schedule"]):
        values = [rows[index]["held_out"][metric] for rows in runs if len(rows) > index and metric in rows[index]["held_out"]]
        if len(values) != len(runs):
            break
        points.append((float(corrections), statistics.fmean(values)))
    return points


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's three figures for every (start, strategy) group, from its mean curves."""
    base = summary["base"]
    result: dict[str, Any] = {}
    if not base:
        return result
    for group in summary["groups"]:
        start, strategy = group.split(":")
        curve = mean_curve(summary, group)
        random_curve = mean_curve(summary, f"{start}:random")
        entry: dict[str, Any] = {"rounds": len(curve) - 1}
        if len(random_curve) > 1 and strategy != "random":
            last_n, last_wer = random_curve[-1]
            needed = labels_to_match(curve[: len(random_curve)], last_wer)
            entry["labels_to_match_random"] = {"random_corrections": last_n, "random_wer": last_wer, "needed": needed,
                                               "share": None if needed is None else needed / last_n}
        runs = [summary["runs"][run] for run in summary["groups"][group]]
        last = [rows[-1]["held_out"] for rows in runs if rows]
        if last and len(last) == len(runs):
            entry["last_accent_vs_base"] = _mean([h["accent"] for h in last]) / base["accent"]
            entry["last_standard_vs_base"] = {name: _mean([h[name] for h in last]) / base[name] for name in STANDARD_SETS if name in base}
        worse = []
        for run in summary["groups"][group]:
            for row in summary["runs"][run]:
                for name, pair in (row["standard_vs_replaced"] or {}).items():
                    if pair["before"] is None or pair["after"] is None:
                        continue
                    limit = max(TOLERANCE * pair["before"], FLOOR)
                    if pair["after"] - pair["before"] > limit:
                        worse.append(f"{run} round {row['round']} {name}: {pair['before']:.3f} -> {pair['after']:.3f} (limit +{limit:.3f})")
        entry["standard_worse_than_replaced"] = worse
        entry["standard_gate_rule"] = gate_rule_verdicts(summary, group)
        result[group] = entry
    return result


def gate_rule_verdicts(summary: dict[str, Any], group: str) -> dict[str, Any]:
    """The gate's rule (worse beyond the tolerance and credibly) on the promoted pairs standard_check.py judged."""
    judged, missing, failed = 0, 0, []
    for run in summary["groups"][group]:
        for row in summary["runs"][run]:
            if row["outcome"] != "promoted":
                continue
            slices = row.get("standard_gate_rule")
            if slices is None:
                missing += 1
                continue
            judged += 1
            failed += [f"{run} round {row['round']} {s['slice']}: {s['before']:.3f} -> {s['after']:.3f} "
                       f"({s['point']:+.3f}, CI {s['low']:+.3f}..{s['high']:+.3f}, limit +{s['limit']:.3f})"
                       for s in slices if s["failed"]]
    return {"judged": judged, "not_judged": missing, "failed": failed}


def _f(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def markdown(summary: dict[str, Any]) -> str:
    base = summary["base"] or {}
    lines = [
        "# bench/term: a term of rounds on whisper-base",
        "",
        "Held-out WER (each clip alone, CTranslate2 int8, beam 5) of the version served after each round. accent: "
        "everyday sentences with the Andalusian rules, Kokoro jf_nezumi + jm_kumo; standard: the same sentences in "
        f"standard Spanish (Kokoro; espeak-ng es-419 + es+m3); {MALE} (male) alone. whisper-base: accent "
        f"{_f(base.get('accent'))}, standard {_f(base.get('standard'))} / espeak {_f(base.get('standard-espeak'))}, "
        f"{MALE} accent {_f(base.get('accent:' + MALE))} standard {_f(base.get('standard:' + MALE))}.",
        "",
        "| run | round | corrections | outcome | served | accent | accent jm_kumo | standard kokoro | standard espeak "
        "| standard jm_kumo | refused candidate: accent / standard | train s | finish s |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for run, rows in summary["runs"].items():
        for r in rows:
            h = r["held_out"]
            c = r.get("candidate_held_out") or {}
            refused = f"{_f(c.get('accent'))} / {_f(c.get('standard'))}" if c else "-"
            lines.append(
                f"| {run} | {r['round']} | {r['corrections']} | {r['outcome']} | {r['served']} | {_f(h.get('accent'))} | "
                f"{_f(h.get('accent:' + MALE))} | {_f(h.get('standard'))} | {_f(h.get('standard-espeak'))} | "
                f"{_f(h.get('standard:' + MALE))} | {refused} | {_f(r['steps'].get('train'), 0)} | {_f(r['finish_seconds'], 0)} |"
            )
    lines += ["", "## Mean over seeds, accent WER by corrections", "",
              "| start:strategy | seeds | " + " | ".join(str(n) for n in [0, *summary["schedule"]]) + " |",
              "|---|---:|" + "---:|" * (len(summary["schedule"]) + 1)]
    for group, runs in summary["groups"].items():
        curve = mean_curve(summary, group)
        cells = [_f(w) for _, w in curve] + ["-"] * (len(summary["schedule"]) + 1 - len(curve))
        lines.append(f"| {group} | {len(runs)} | " + " | ".join(cells) + " |")
    lines += gate_lines(summary)
    lines += ["", "## Targets (issue 27)", ""]
    for group, t in summary["targets"].items():
        match = t.get("labels_to_match_random")
        parts = [f"**{group}** ({t['rounds']} rounds reached by every seed)"]
        if match:
            parts.append(
                f"labels to reach random's WER {_f(match['random_wer'])} at {match['random_corrections']:.0f}: "
                + ("not reached" if match["needed"] is None else f"{match['needed']:.0f} ({100 * match['share']:.0f} % of random's; target <= 50 %)")
            )
        if "last_accent_vs_base" in t:
            std = ", ".join(f"{name} x{v:.3f}" for name, v in t["last_standard_vs_base"].items())
            parts.append(f"last version vs whisper-base: accent x{t['last_accent_vs_base']:.3f} (target <= 0.5), standard {std} (target <= 1.02)")
        worse = t["standard_worse_than_replaced"]
        parts.append("no promoted version's point estimate on held-out standard speech beyond the gate's tolerance of the one it replaced"
                     if not worse else "point estimates beyond the tolerance of the version replaced: " + "; ".join(worse))
        rule = t.get("standard_gate_rule") or {}
        if rule.get("judged"):
            judged = f"{rule['judged']} promotion(s) judged by the gate's rule (standard_check.py)"
            if rule["not_judged"]:
                judged += f", {rule['not_judged']} not yet"
            parts.append(f"{judged}: " + ("none credibly worse beyond the tolerance" if not rule["failed"]
                                         else "credibly worse beyond the tolerance: " + "; ".join(rule["failed"])))
        lines.append("- " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def _test_size(test: dict[str, Any]) -> str:
    return "-" if test.get("clips") is None else f"{test['clips']} clips, {test.get('words')} words"


def gate_lines(summary: dict[str, Any]) -> list[str]:
    """The gate's test condition of every round: what the user's own held-out sessions said, beside what
    the held-out sets say of the version served before the round and of the candidate (promoted or
    refused), so each decision can be checked on voices and sentences the test split does not have."""
    lines = ["", "## The gate's test split, round by round", "",
             "| run | round | outcome | test split | test WER served -> candidate | difference | 95 % CI | failed | "
             "held-out before: accent / standard | candidate: accent / standard |",
             "|---|---:|---|---|---|---:|---|---|---|---|"]
    for run, rows in summary["runs"].items():
        before = summary["base"] or {}
        for r in rows:
            gate = r.get("gate") or {}
            test = next((c for c in gate.get("conditions") or [] if c.get("name") == "test"), None)
            candidate = r["held_out"] if r["outcome"] == "promoted" else (r.get("candidate_held_out") or {})
            if test is not None:
                failed = [c["name"] for c in gate.get("conditions") or [] if c.get("decided") and not c.get("passed")]
                lines.append(
                    f"| {run} | {r['round']} | {r['outcome']} | {_test_size(test)} | "
                    f"{_f(test.get('current_wer'))} -> {_f(test.get('candidate_wer'))} | "
                    f"{test['point']:+.3f} | {test['ci_low']:+.3f}..{test['ci_high']:+.3f} | {', '.join(failed) or '-'} | "
                    f"{_f(before.get('accent'))} / {_f(before.get('standard'))} | "
                    f"{_f(candidate.get('accent'))} / {_f(candidate.get('standard'))} |"
                )
            before = r["held_out"] or before
    return lines


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for metric, ax, title in (("accent", axes[0], "held-out accent WER"), ("standard", axes[1], "held-out standard WER (Kokoro)")):
        for group in summary["groups"]:
            curve = mean_curve(summary, group, metric)
            if len(curve) > 1:
                ax.plot([n for n, _ in curve], [100 * w for _, w in curve], "o-", label=group)
        ax.set_xlabel("corrections")
        ax.set_ylabel("WER (%)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(summary: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "term.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    text = markdown(summary)
    (out / "term.md").write_text(text)
    if summary["base"]:
        plot(summary, out / "term.png")
    return text

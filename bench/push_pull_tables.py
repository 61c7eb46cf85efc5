"""The push/pull benchmark's figures (one row per phase and variant) and their tables, with the issue's
targets met or missed."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.push_pull_processes import Code, describe_database

UPDATED_ANNOTATIONS = 100

# (key, label, target, baseline key): one table row each, in this order.
PHASES = [
    ("import", "Label Studio import alone", "", None),
    ("push", "habla-ls sync push (all new)", "<= 1.5x import", "import"),
    ("repush", "habla-ls sync push (unchanged)", "< 2 s at 10k", None),
    ("export", "Label Studio JSON export alone", "", None),
    ("pull", "habla-ls sync pull (first)", "<= 1.1x export", "export"),
    ("repull", "habla-ls sync pull (nothing new)", "< 2 s", None),
    ("pull100", f"habla-ls sync pull ({UPDATED_ANNOTATIONS} updated)", "", None),
]
RATIO_LIMITS = {"push": 1.5, "pull": 1.1}
SECONDS_LIMITS = {"repull": 2.0}
RSS_LIMIT_MIB = 300


@dataclass
class Row:
    """One phase of one variant."""

    wall: float
    server_cpu: float
    rss: float | None = None  # MiB, habla-ls phases only
    detail: str = ""
    cpu: float | None = None  # the habla-ls process's own CPU seconds


@dataclass
class Variant:
    """One checkout's code on one database kind, on its own fresh Label Studio: a column of the tables."""

    database: str
    code: Code
    rows: dict[str, Row] = field(default_factory=dict)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    imported_from: str = ""
    server_peak_rss: float = float("nan")
    manifest_rows: int = 0


def _ratio(variant: Variant, key: str, baseline: str | None) -> float | None:
    if baseline is None or key not in variant.rows or baseline not in variant.rows:
        return None
    return variant.rows[key].wall / variant.rows[baseline].wall


def _load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def print_tables(variants: list[Variant], segments: int) -> None:
    """One table per database kind, its variants side by side, then each variant's load, verdict and details."""
    for database in dict.fromkeys(v.database for v in variants):
        group = [v for v in variants if v.database == database]
        print()
        print(f"{describe_database(database)}, {segments} segments")
        head = f"{'phase':<40} {'target':<15}"
        sub = f"{'':<40} {'':<15}"
        for v in group:
            head += f" | {v.code.label:<40}"
            sub += f" | {'wall s':>7} {'ratio':>6} {'srv CPU':>8} {'CPU':>6} {'RSS MiB':>8}"
        print(head)
        print(sub)
        print("-" * len(sub))
        for key, label, target, baseline in PHASES:
            line = f"{label:<40} {target:<15}"
            for v in group:
                row = v.rows.get(key)
                if row is None:
                    line += f" | {'-':>7} {'':>6} {'':>8} {'':>6} {'':>8}"
                    continue
                ratio = _ratio(v, key, baseline)
                ratio_text = f"{ratio:.2f}x" if ratio is not None else ""
                rss_text = f"{row.rss:.0f}" if row.rss is not None else "-"
                cpu_text = f"{row.cpu:.2f}" if row.cpu is not None else "-"
                line += f" | {row.wall:7.2f} {ratio_text:>6} {row.server_cpu:8.2f} {cpu_text:>6} {rss_text:>8}"
            print(line)
        print("-" * len(sub))
        for v in group:
            print(
                f"{v.code.label}: load average (1/5/15 min) {_load(v.load_before)} before, {_load(v.load_after)} after; "
                f"{v.imported_from}; manifest rows {v.manifest_rows}; Label Studio peak RSS {v.server_peak_rss:.0f} MiB"
            )
            print(f"  {verdict(v, segments)}")
            for key, label, *_ in PHASES:
                row = v.rows.get(key)
                if row is not None and row.detail:
                    print(f"    {label}: {row.detail}")


def verdict(variant: Variant, segments: int) -> str:
    """The targets, met or not, in one line."""
    parts = []
    for key, limit in RATIO_LIMITS.items():
        ratio = _ratio(variant, key, dict((k, b) for k, _, _, b in PHASES)[key])
        if ratio is not None:
            parts.append(f"{key} {ratio:.2f}x {'ok' if ratio <= limit else 'MISSED'} (<= {limit}x)")
    for key, limit in SECONDS_LIMITS.items():
        if key in variant.rows:
            wall = variant.rows[key].wall
            parts.append(f"{key} {wall:.2f} s {'ok' if wall < limit else 'MISSED'} (< {limit:.0f} s)")
    if "repush" in variant.rows:
        wall = variant.rows["repush"].wall
        scaled = "" if segments == 10_000 else f", target is for 10,000 segments, this run has {segments}"
        parts.append(f"repush {wall:.2f} s ({'ok' if wall < 2.0 else 'over 2 s'}{scaled})")
    peak = max((r.rss for r in variant.rows.values() if r.rss is not None), default=0.0)
    parts.append(f"peak RSS {peak:.0f} MiB {'ok' if peak < RSS_LIMIT_MIB else 'MISSED'} (< {RSS_LIMIT_MIB})")
    return "; ".join(parts)

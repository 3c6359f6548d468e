"""The benchmark's report: ratios, the targets of issue 15, a table and a chart."""

from pathlib import Path
from typing import Any

PUBLISH_PATHS = (
    "native",
    "python client",
    "gateway batched",
    "gateway batched records",
    "gateway batched records, JSON schema",
    "gateway single",
    "http floor",
    "pulsar websocket",
    "pulsar rest",
)
LATENCY_PATHS = ("native", "gateway single", "pulsar websocket", "pulsar rest")


def added(latency: dict[str, Any], percentile: str) -> float | None:
    """Gateway minus native latency at one offered rate; None unless both measured it."""
    gateway, native = latency["gateway single"], latency["native"]
    if not gateway["latency_ms"]["count"] or not native["latency_ms"]["count"]:
        return None
    return round(gateway["latency_ms"][percentile] - native["latency_ms"][percentile], 3)


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for payload, paths in results["publish"].items():
        tput = {p: r["msgs_per_s"] for p, r in paths.items()}
        lat = results["latency"][payload]
        out[f"publish {payload} B"] = {
            "gateway batched / native": ratio(tput["gateway batched"], tput["native"]),
            # The ceiling of a gateway in Python: its client, alone in one process.
            "gateway batched / python client": ratio(
                tput["gateway batched"], tput["python client"]
            ),
            "python client / native": ratio(tput["python client"], tput["native"]),
            "gateway single / pulsar websocket": ratio(
                tput["gateway single"], tput["pulsar websocket"]
            ),
            "gateway single / pulsar rest": ratio(tput["gateway single"], tput["pulsar rest"]),
            # What the server stack alone allows: the rest is the gateway's own work.
            "gateway single / http floor": ratio(tput["gateway single"], tput["http floor"]),
            # What checking each value against the topic's JSON schema costs.
            "records with schema / without": ratio(
                tput["gateway batched records, JSON schema"], tput["gateway batched records"]
            ),
            "added p50 ms (gateway single - native)": added(lat, "p50"),
            "added p99 ms (gateway single - native)": added(lat, "p99"),
        }
    for section in ("work_queue", "replay"):
        for payload, paths in results[section].items():
            native = paths["native"]["msgs_per_s"]
            out[f"{section.replace('_', ' ')} {payload} B"] = {
                f"{p} / native": ratio(r["msgs_per_s"], native)
                for p, r in paths.items()
                if p != "native"
            }
    return out


TARGETS = [
    ("gateway batched / native", ">=", 0.4),
    ("gateway batched / python client", ">=", 1.5),
    ("gateway single / pulsar websocket", ">=", 0.5),
    ("gateway single / pulsar rest", ">=", 3.0),
    ("added p50 ms (gateway single - native)", "<=", 1.0),
    ("added p99 ms (gateway single - native)", "<=", 10.0),
    ("gateway pull 100 / native", ">=", 0.4),
    ("gateway pull 10 / native", ">=", 0.15),
    ("gateway read / native", ">=", 0.3),
    ("gateway sse / native", ">=", 0.3),
]


def targets(measured: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for group, values in measured.items():
        for name, op, goal in TARGETS:
            if name in values and values[name] is not None:
                value = values[name]
                met = value >= goal if op == ">=" else value <= goal
                checks.append(
                    {
                        "scenario": group,
                        "ratio": name,
                        "value": value,
                        "target": f"{op} {goal}",
                        "met": met,
                    }
                )
    return checks


def table(results: dict[str, Any], measured: dict[str, Any], checks: list[dict[str, Any]]) -> str:
    lines = []
    row = "{:<34} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>22}"
    for section in ("publish", "latency", "work_queue", "replay"):
        for payload, paths in results[section].items():
            title = f"{section.replace('_', ' ')} {payload} B"
            if section == "latency":
                title += f" (open loop, {paths['offered_per_s']:.0f}/s offered)"
            lines += [
                "",
                title,
                row.format(
                    "path",
                    "msgs/s",
                    "MB/s",
                    "p50 ms",
                    "p99 ms",
                    "p99.9 ms",
                    "gw us/req",
                    "gw us/msg",
                    "cpu s gw/broker/load",
                ),
            ]
            for path, r in paths.items():
                if path == "offered_per_s":
                    continue
                latency = r.get("latency_ms") or {}
                cells = [latency.get(k) for k in ("p50", "p99", "p999")]
                through_gateway = path.startswith("gateway")
                cpu = r.get("cpu_s") or {}
                lines.append(
                    row.format(
                        path,
                        f"{r['msgs_per_s']:.0f}",
                        f"{r['mb_per_s']:.2f}",
                        *(f"{c:.2f}" if latency.get("count") else "-" for c in cells),
                        r.get("gateway_us_per_request", "-") if through_gateway else "-",
                        r.get("gateway_us_per_message", "-") if through_gateway else "-",
                        "/".join(f"{cpu[k]:.1f}" for k in ("gateway", "broker", "loadgen"))
                        if cpu
                        else "-",
                    )
                    + (f"   errors: {r['errors']}" if r.get("errors") else "")
                )
    lines += ["", "ratios"]
    for group, values in measured.items():
        for name, value in values.items():
            lines.append(f"  {group:<16} {name:<42} {value}")
    lines += ["", "targets"]
    for c in checks:
        lines.append(
            f"  {'met ' if c['met'] else 'MISS'} {c['scenario']:<16} {c['ratio']:<42} "
            f"{c['value']} (target {c['target']})"
        )
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    payloads = list(results["publish"])
    fig, axes = plt.subplots(1, 1 + len(payloads), figsize=(6 * (1 + len(payloads)), 5))
    ax = axes[0]
    width = 0.8 / len(payloads)
    for i, payload in enumerate(payloads):
        paths = results["publish"][payload]
        ax.bar(
            [x + i * width for x in range(len(paths))],
            [r["msgs_per_s"] for r in paths.values()],
            width=width,
            label=f"{payload} B",
        )
    ax.set_xticks([x + width * (len(payloads) - 1) / 2 for x in range(len(PUBLISH_PATHS))])
    ax.set_xticklabels(PUBLISH_PATHS, rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("messages / s (log)")
    ax.set_title("Publish throughput (closed loop)")
    ax.legend()
    for ax, payload in zip(axes[1:], payloads, strict=True):
        latency = results["latency"][payload]
        for name in LATENCY_PATHS:
            values = latency[name]["latency_ms"]
            ax.plot(
                ["p50", "p90", "p99", "p99.9"],
                [values[k] for k in ("p50", "p90", "p99", "p999")],
                marker="o",
                label=name,
            )
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(f"Publish latency, {payload} B at {latency['offered_per_s']:.0f}/s offered")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)

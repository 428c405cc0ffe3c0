"""arkerfs next to sshfs, same workloads, same run, same simulated network.

Both filesystems reach their backend through a ``DelayProxy`` with the given RTT: arkerfs
talks HTTP to a local ``arkerfs serve``, sshfs talks SFTP to a private sshd on loopback. Every
measured run gets a fresh mount (cold caches); the samples are interleaved between the targets
so a slow moment of the machine hits both. Reported per workload: the median wall time the
application saw, the time until the data is pushed, the API calls by kind (from the server's
``/_local/stats``), calls per file, and the ratio to sshfs.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bench.proxy import DelayProxy
from bench.targets import ArkerfsTarget, SshfsTarget, force_unmount, started
from bench.vmchange import MEASURES
from bench.workloads import Sizes, Workload, build_fixtures, git_env, workloads

TARGETS = ("arkerfs", "arkerfs-wb", "sshfs", "sdk")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
NOT_PUSHED_NOTE = "n/a (write-through: pushed at close)"


@dataclass
class Options:
    rtt_ms: list[float] = field(default_factory=lambda: [20.0])
    runs: int = 3
    workloads: list[str] | None = None
    targets: list[str] = field(default_factory=lambda: list(TARGETS))
    quick: bool = False
    json_path: Path | None = None


def run(opts: Options) -> dict:
    sizes = Sizes.for_run(opts.quick)
    chosen = [w for w in workloads(sizes) if not opts.workloads or w.key in opts.workloads]
    if not chosen:
        raise SystemExit(f"no workload matches {opts.workloads}; known: {[w.key for w in workloads(sizes)]}")
    notes: list[str] = []
    samples: dict[tuple[float, str, str], list[dict]] = {}
    targets: list = []
    workdir = Path(tempfile.mkdtemp(prefix="arkerfs-bench-"))
    try:
        with ExitStack() as stack:
            fixtures = build_fixtures(workdir / "fixtures", sizes)
            targets.extend(_start_targets(opts.targets, workdir, stack, notes))
            for target in targets:
                _seed_reads(target, fixtures, chosen)
            for rtt in opts.rtt_ms:
                with ExitStack() as proxies:
                    proxy = {t.name: proxies.enter_context(DelayProxy("127.0.0.1", t.backend_port, rtt))
                             for t in targets}
                    for workload in chosen:
                        for index in range(opts.runs):
                            for target in targets:
                                if target.name in opts.targets:
                                    sample = _measure(target, proxy[target.name], workload, fixtures, workdir,
                                                      f"{workload.key}-{rtt:g}-{index}")
                                    _record(samples, rtt, workload, target.name, sample, index, opts.runs)
                                if workload.sdk and target.name == "arkerfs" and "sdk" in opts.targets:
                                    sample = _measure_sdk(target, proxy["arkerfs"], workload, fixtures,
                                                          f"sdk-{rtt:g}-{index}")
                                    _record(samples, rtt, workload, "sdk", sample, index, opts.runs)
    finally:
        _remove_workdir(workdir)
    has_sync = any(isinstance(t, ArkerfsTarget) and t.has_sync for t in targets)
    result = _summarize(opts, sizes, chosen, samples, notes, has_sync)
    print_tables(result)
    path = opts.json_path or RESULTS_DIR / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nJSON: {path}")
    return result


def _start_targets(names: list[str], workdir: Path, stack: ExitStack, notes: list[str]) -> list:
    targets = []
    if "arkerfs" in names or "sdk" in names:
        targets.append(stack.enter_context(started(ArkerfsTarget(workdir))))
    if "arkerfs-wb" in names:
        targets.append(stack.enter_context(started(ArkerfsTarget(workdir, write_back=True))))
    if "sshfs" in names:
        why_not = SshfsTarget.available()
        if why_not:
            notes.append(f"sshfs skipped: {why_not}")
            _progress(f"sshfs skipped: {why_not}")
        else:
            targets.append(stack.enter_context(started(SshfsTarget(workdir))))
    return targets


def _seed_reads(target, fixtures: Path, chosen: list[Workload]) -> None:
    needed = {w.reads for w in chosen if w.reads}
    for name in sorted(needed):
        if name == "big.bin":
            target.put_file(fixtures / "big.bin", "read/big.bin")
        elif (fixtures / "read" / name).is_file():
            target.put_file(fixtures / "read" / name, f"read/{name}")
        else:
            target.seed(fixtures / "read" / name, f"read/{name}")


def _measure(target, proxy: DelayProxy, workload: Workload, fixtures: Path, workdir: Path, tag: str) -> dict:
    """One cold run: seed, fresh mount, time the command, then the push; never raises for a
    failing command (the sample records the error, the other targets still run)."""
    remote_dir = f"w/{tag}"
    fresh_dir = workload.kind == "write" or workload.seed is not None  # a copy of its own per run
    if fresh_dir:
        target.seed(fixtures / workload.seed if workload.seed else None, remote_dir)
    out = workdir / "out" / f"{target.name}-{tag}"
    out.mkdir(parents=True)
    sample: dict = {}
    try:
        with target.mount(proxy) as mnt:
            def shell(text: str) -> subprocess.CompletedProcess:
                command = text.format(mnt=shlex.quote(str(mnt)), dir=shlex.quote(str(mnt / remote_dir)),
                                      fx=shlex.quote(str(fixtures)), out=shlex.quote(str(out)))
                return subprocess.run(["bash", "-c", command], env=_workload_env(), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

            if workload.warmup:  # not timed, not counted: the state the workload starts from
                warm = shell(workload.warmup)
                if warm.returncode != 0:
                    raise RuntimeError(f"warm-up failed (exit {warm.returncode}): {warm.stderr.strip()[-500:]}")
            target.reset_calls()
            if workload.measure:
                sample.update(MEASURES[workload.measure](target, mnt, remote_dir))
            else:
                start = time.perf_counter()
                done = shell(workload.command)
                sample["wall_s"] = time.perf_counter() - start
                if done.returncode != 0:
                    sample["error"] = f"exit {done.returncode}: {done.stderr.strip()[-500:]}"
                elif workload.kind == "write":
                    push = target.push(mnt)
                    sample["pushed_s"] = None if push is None else sample["wall_s"] + push
            if not workload.measure:  # a measurement counts the mount's calls itself
                sample["calls"] = target.calls()
        sample["umount_s"] = target.last_umount_s
    except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
        sample["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(out, ignore_errors=True)
    # Not in the finally: on Ctrl-C the backend may be gone too, and the work dir goes anyway.
    if fresh_dir:
        target.remove(remote_dir)
    return sample


def _measure_sdk(target: ArkerfsTarget, proxy: DelayProxy, workload: Workload, fixtures: Path, tag: str) -> dict:
    remote_dir = f"w/{tag}"
    target.seed(None, remote_dir)
    target.reset_calls()
    start = time.perf_counter()
    try:
        if workload.sdk == "write":
            target.sdk_write(proxy, fixtures / "big.bin", f"{remote_dir}/big.bin")
        else:
            target.sdk_read(proxy, "read/big.bin")
        sample = {"wall_s": time.perf_counter() - start, "calls": target.calls()}
    except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
        sample = {"wall_s": time.perf_counter() - start, "error": f"{type(exc).__name__}: {exc}"}
    target.remove(remote_dir)
    return sample


def _workload_env() -> dict[str, str]:
    """What the workload's tools see: no API key (they do not need it), a fixed git identity."""
    env = {k: v for k, v in git_env().items() if not k.startswith("ARKER_")}
    env["LC_ALL"] = "C"
    return env


def _record(samples: dict, rtt: float, workload: Workload, target: str, sample: dict, index: int, runs: int) -> None:
    samples.setdefault((rtt, workload.key, target), []).append(sample)
    shown = f"error: {sample['error']}" if "error" in sample else f"{sample['wall_s']:.2f} s"
    calls = sum(sample.get("calls", {}).values())
    _progress(f"[{rtt:g} ms] {workload.key:<9} {target:<7} run {index + 1}/{runs}: {shown}"
              + (f", {calls} calls" if calls else ""))


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _remove_workdir(workdir: Path) -> None:
    """Unmount anything still under the work dir, then delete it (never through a live mount)."""
    prefix = os.path.realpath(workdir) + "/"
    with open("/proc/self/mounts") as f:
        leftovers = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for path in leftovers:
        force_unmount(Path(path))
    with open("/proc/self/mounts") as f:
        if any(line.split()[1].startswith(prefix) for line in f):
            print(f"warning: a mount is still under {workdir}; left it in place", file=sys.stderr)
            return
    shutil.rmtree(workdir, ignore_errors=True)


# -- summary --


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _summarize(opts: Options, sizes: Sizes, chosen: list[Workload], samples: dict, notes: list[str],
               has_sync: bool) -> dict:
    rows = []
    for (rtt, key, target), runs in samples.items():
        workload = next(w for w in chosen if w.key == key)
        ok = [s for s in runs if "error" not in s]
        routes = sorted({r for s in ok for r in s.get("calls", {})})
        calls = {r: statistics.median_low([s.get("calls", {}).get(r, 0) for s in ok]) for r in routes}
        pushed = [s["pushed_s"] for s in ok if s.get("pushed_s") is not None]
        row = {
            "rtt_ms": rtt, "workload": key, "title": workload.title, "kind": workload.kind,
            "target": target, "files": workload.files, "runs": runs,
            "wall_s": _median([s["wall_s"] for s in ok]),
            "pushed_s": _median(pushed),
            "calls": calls if target != "sshfs" else None,
            "calls_per_file": (sum(calls.values()) / workload.files) if target != "sshfs" and ok else None,
            "errors": [s["error"] for s in runs if "error" in s],
        }
        if any("changes" in s for s in ok):  # vm-change: seconds to visible, per change (median)
            labels = [label for label in ok[0]["changes"]]
            row["changes_s"] = {label: _median([s["changes"][label] for s in ok if label in s["changes"]])
                                for label in labels}
        if workload.kind == "write" and target == "arkerfs" and row["pushed_s"] is None and ok:
            row["pushed_note"] = NOT_PUSHED_NOTE
        rows.append(row)
    by_key = {(r["rtt_ms"], r["workload"], r["target"]): r for r in rows}
    for row in rows:
        sshfs = by_key.get((row["rtt_ms"], row["workload"], "sshfs"))
        if row["target"] != "sshfs" and sshfs and sshfs["wall_s"] and row["wall_s"] is not None:
            row["ratio_to_sshfs"] = row["wall_s"] / sshfs["wall_s"]
    return {
        "meta": _machine() | {
            "rtt_ms": opts.rtt_ms, "runs": opts.runs, "quick": opts.quick, "targets": opts.targets,
            "workloads": [w.key for w in chosen], "sizes": sizes.__dict__,
            "arkerfs_sync_command": has_sync, "command": " ".join([Path(sys.executable).name, "-m", "bench",
                                                                  *sys.argv[1:]]),
            "notes": notes,
        },
        "results": rows,
    }


def _machine() -> dict:
    def first_line(cmd: list[str], containing: str = "") -> str | None:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if containing in line]
        return lines[0] if lines else None

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
        "sshfs": first_line(["sshfs", "--version"], "SSHFS version"),
        "arkerfs_commit": first_line(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"]),
    }


# -- table --


def print_tables(result: dict) -> None:
    meta = result["meta"]
    for rtt in meta["rtt_ms"]:
        rows = [r for r in result["results"] if r["rtt_ms"] == rtt]
        by = {(r["workload"], r["target"]): r for r in rows}
        table = [("workload", "files", "mode", "arkerfs s", "pushed s", "sshfs s", "ratio", "SDK s",
                  "API calls", "calls/file", "calls by kind")]
        for key in meta["workloads"]:
            ssh, sdk = by.get((key, "sshfs")), by.get((key, "sdk"))
            for name, mode in (("arkerfs", "write-through"), ("arkerfs-wb", "write-back")):
                ark = by.get((key, name))
                any_row = ark or ssh or sdk
                if any_row is None or (ark is None and name == "arkerfs-wb"):
                    continue
                calls = (ark or {}).get("calls") or {}
                table.append((
                    any_row["title"], str(any_row["files"]), mode, _seconds(ark), _pushed(ark), _seconds(ssh),
                    f"{ark['ratio_to_sshfs']:.2f}" if ark and ark.get("ratio_to_sshfs") else "-",
                    _seconds(sdk) + (f" ({sum(sdk['calls'].values())} calls)" if sdk and sdk.get("calls") else ""),
                    str(sum(calls.values())) if ark and ark["wall_s"] is not None and ark["calls"] is not None else "-",
                    f"{ark['calls_per_file']:.2f}" if ark and ark.get("calls_per_file") is not None else "-",
                    " ".join(f"{k}={v}" for k, v in calls.items()) or "-",
                ))
        runs = meta["runs"]
        print(f"\nSide by side at {rtt:g} ms RTT, median of {runs} run{'s' * (runs != 1)}"
              f"{' (--quick sizes)' if meta['quick'] else ''}; {meta['nproc']} CPUs, Linux {meta['kernel']}, "
              f"{meta['date']}" + (f", {meta['sshfs']}" if meta.get("sshfs") else ""))
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        for i, row in enumerate(table):
            print("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
            if i == 0:
                print("  ".join("-" * w for w in widths))
        if any(r.get("pushed_note") for r in rows):
            print(f"pushed s: {NOT_PUSHED_NOTE}: no `arkerfs sync` yet, the wall time already includes "
                  "the upload.")
        for r in rows:
            if r.get("changes_s"):
                print(f"{r['workload']} on {r['target']}, seconds to visible: "
                      + " ".join(f"{label}={s:.2f}" for label, s in r["changes_s"].items()))
        for r in rows:
            for error in r["errors"]:
                print(f"FAILED {r['workload']} on {r['target']}: {error}")
    for note in meta["notes"]:
        print(f"note: {note}")


def _seconds(row: dict | None) -> str:
    if row is None:
        return "-"
    if row["wall_s"] is None:
        return "FAILED"
    return f"{row['wall_s']:.2f}"


def _pushed(row: dict | None) -> str:
    if row is None or row["kind"] != "write" or row["wall_s"] is None:
        return "-"
    return f"{row['pushed_s']:.2f}" if row["pushed_s"] is not None else "n/a"

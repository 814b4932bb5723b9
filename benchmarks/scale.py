"""What a pool of 1, 10, 100 and 1,000 tasks costs: disk, load, memory, prediction, adding, serving.

Entries: a few real tasks (text4's corpora, each prompt and head trained on its own slice of
its corpus, the selector's statistics fitted on it, then exported) imported again and again
under new names, every tensor nudged by seeded noise so that every task file differs: what a
team sharing exported tasks does. Every size goes through the public paths in one process, on
one loaded backbone:

* import: ``PromptPool.import_task`` of each export file into an empty pool;
* save: ``PromptPool.save`` into a new folder; bytes on disk (and per task);
* load: ``PromptPool.load`` of that folder on the loaded backbone (the backbone's own load is
  timed once, at the start);
* a routed and a forced (``tasks=``) ``predict`` of 32 real test texts (fresh texts each
  repeat, so no cached query features), median over repeats; the first routed batch after
  loading is reported on its own (load builds the selector's pooled statistics, so it should
  cost what the others do);
* add one task to the saved, loaded pool: ``import_task`` + ``save``, and which files that
  wrote;
* serve: the FastAPI app of ``continual serve`` (its pool poller running, default interval)
  on the folder; another task is imported on disk with the ``continual import`` function and
  the time until a request forced to it is answered is measured;
* peak resident memory, sampled every 20 ms, over import, save, load, predict and adding a
  task, and over serving on its own, against the backbone's: the process's resident memory
  once the backbone was loaded and ran a batch (at rest), and the same work's peak on the
  1-task pool (the backbone as it works, when the pool holds next to nothing); then import,
  save, load, predict and adding a task once more for each size, in a fresh process each.

Writes results.json, report.md and scale.png to --out (default results/scale).

    python benchmarks/scale.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
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
from pathlib import Path

import torch

from continual import Backbone, PromptPool, TrainingConfig
from continual.bench.memory import PeakMemory
from continual.bench.sequences import load_sequence
from continual.exported import read_export_file, write_export_file
from continual.files import atomic_write_bytes
from continual.learner import train_task
from continual.manage import import_task

BATCH = 32


def prepare(cache: Path, quick: bool) -> None:
    """Train and export the real tasks (run in a child process: its peak memory is training's)."""
    torch.manual_seed(0)
    backbone = Backbone.load()
    tasks = load_sequence(
        "text4",
        train_per_label=8 if quick else 32,
        test_per_label=40,
        validation_per_label=8,
    )
    pool = PromptPool(backbone, prompt_length=16, training=TrainingConfig(epochs=1))
    texts: list[str] = []
    for task in tasks:
        trained = train_task(backbone, task, 16, pool.training, seed=0, progress=False)
        pool.add_trained(task, trained)
        pool.export_task(task.name, cache / f"{task.name}.safetensors")
        texts += [text for text, _ in task.test]
    atomic_write_bytes(cache / "texts.json", json.dumps(texts).encode())


def nudged_export(base: Path, name: str, seed: int, out: Path) -> Path:
    """``base`` exported again as task ``name``, every tensor nudged by seeded noise."""
    tensors, info = read_export_file(base)
    generator = torch.Generator().manual_seed(seed)
    nudged = {}
    for key, tensor in tensors.items():
        spread = tensor.float().abs().mean()  # std() of a one-number tensor is undefined
        noise = torch.randn(tensor.shape, generator=generator) * 1e-3 * spread
        nudged[key] = (tensor.float() + noise).to(tensor.dtype)
    return write_export_file(
        out / f"{name}.safetensors",
        nudged,
        name=name,
        labels=info["labels"],
        stats=info["stats"],
        selector=info["selector_config"],
        backbone=info["backbone"],
    )


def nudged_exports(bases: list[Path], count: int, out: Path) -> list[Path]:
    """``count`` export files task-0000, task-0001, ...: the bases in turn, each nudged by its
    own seed."""
    return [nudged_export(bases[i % len(bases)], f"task-{i:04d}", i, out) for i in range(count)]


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: relative name → (inode, modification time)."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file() and path.name != ".lock":  # the lock file holds nothing
            info = path.stat()
            found[str(path.relative_to(folder))] = (info.st_ino, info.st_mtime_ns)
    return found


class Clock:
    """Seconds since it was made: ``clock = Clock(); ...; clock.seconds``."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


def release() -> None:
    """Collect garbage and hand freed memory back to the system (glibc ``malloc_trim``), so a
    dropped pool's pages do not stay counted as resident."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: freed memory stays counted


def measure(
    size: int,
    backbone: Backbone,
    bases: list[Path],
    texts: list[str],
    work: Path,
    repeats: int,
    reference: PromptPool | None,
) -> dict:
    exports = work / "exports"
    exports.mkdir(parents=True)
    files = nudged_exports(bases, size + 2, exports)
    added, served = files[size], files[size + 1]
    pool_dir = work / "pool"
    batches = [texts[k : k + BATCH] for k in range(0, len(texts) - BATCH + 1, BATCH)]
    row: dict = {"tasks": size}
    with PeakMemory() as memory:  # import, save, load, predict and adding one task
        imported = PromptPool(backbone, prompt_length=16)
        clock = Clock()
        for file in files[:size]:
            imported.import_task(file)
        row["import_s"] = clock.seconds
        clock = Clock()
        imported.save(pool_dir)
        row["save_s"] = clock.seconds
        row["selector_bytes_per_task"] = statistics.mean(
            sum(t.numel() * t.element_size() for t in entry.selector_state.values())
            for entry in imported.entries
        )
        del imported
        release()
        on_disk = sum(path.stat().st_size for path in pool_dir.rglob("*") if path.is_file())
        row["bytes_on_disk"] = on_disk
        row["bytes_per_task"] = on_disk / size

        clock = Clock()
        pool = PromptPool.load(pool_dir, backbone)
        row["load_s"] = clock.seconds
        clock = Clock()
        pool.predict(batches[0])
        row["first_routed_batch_s"] = clock.seconds
        # Interleaved with the same batches on the 1-task pool, so that the machine's load
        # changes alike for both: the ratios are what this measures.
        pools = {"": pool, "reference_": reference or pool}
        times: dict[str, list[float]] = {}
        for repeat in range(repeats):
            for prefix, which in pools.items():
                clock = Clock()
                which.predict(batches[1 + 2 * repeat])
                times.setdefault(f"{prefix}routed_batch_s", []).append(clock.seconds)
                clock = Clock()
                which.predict(batches[2 + 2 * repeat], tasks=which.tasks[0])
                times.setdefault(f"{prefix}forced_batch_s", []).append(clock.seconds)
        row.update({key: statistics.median(values) for key, values in times.items()})

        before = files_of(pool_dir)
        clock = Clock()
        pool.import_task(added)
        pool.save(pool_dir)
        row["add_one_s"] = clock.seconds
        after = files_of(pool_dir)
        row["add_one_wrote"] = sorted(name for name in after if before.get(name) != after[name])
        row["add_one_removed"] = sorted(set(before) - set(after))
        del pool, pools
    release()
    with PeakMemory() as serving:
        row["serve_listed_s"], row["serve_new_task_s"] = serve_new_task(
            pool_dir, backbone, served, texts[:1]
        )
    row["peak_rss_mb"] = round(memory.peak / 1e6, 1)
    row["serve_peak_rss_mb"] = round(serving.peak / 1e6, 1)
    return row


def pool_memory(size: int, cache: Path, work: Path) -> dict:
    """Peak resident memory of import, save, load, predict and adding one task at ``size``
    tasks, in a process that does nothing else (run as a child: no earlier size's freed memory
    or server threads are in it), against its resident memory once the backbone ran a batch."""
    bases = sorted(cache.glob("*.safetensors"))
    texts = json.loads((cache / "texts.json").read_text())[: 2 * BATCH]
    backbone = Backbone.load()
    backbone.query_cache_size = 0
    exports = work / "exports"
    exports.mkdir(parents=True)
    files = nudged_exports(bases, size + 1, exports)
    backbone.query(texts[:BATCH], with_last=True)
    release()
    rest = PeakMemory.resident()
    with PeakMemory() as memory:
        pool = PromptPool(backbone, prompt_length=16)
        for file in files[:size]:
            pool.import_task(file)
        pool.save(work / "pool")
        del pool
        release()
        pool = PromptPool.load(work / "pool", backbone)
        pool.predict(texts[:BATCH])
        pool.predict(texts[BATCH:], tasks=pool.tasks[0])
        pool.import_task(files[size])
        pool.save(work / "pool")
    return {"rest_mb": round(rest / 1e6, 1), "peak_mb": round(memory.peak / 1e6, 1)}


def serve_new_task(
    pool_dir: Path, backbone: Backbone, file: Path, texts: list[str]
) -> tuple[float, float]:
    """Seconds from an import on disk until the running server lists the task, and until it
    answers a request for it."""
    from fastapi.testclient import TestClient

    from continual.serve import create_app

    name = file.stem
    listed = None
    with TestClient(create_app(pool_dir, backbone=backbone)) as client:
        import_task(pool_dir, file)  # as `continual import` in another process would
        started = time.perf_counter()
        while True:
            if listed is None and name in {t["name"] for t in client.get("/tasks").json()["tasks"]}:
                listed = time.perf_counter() - started
            if listed is not None:
                answer = client.post("/predict", json={"texts": texts, "task": name})
                if answer.status_code == 200:
                    return listed, time.perf_counter() - started
                raise RuntimeError(f"the server did not serve {name}: {answer.text}")
            if time.perf_counter() - started > 60:
                raise RuntimeError(f"the server did not list {name} within 60 s")
            time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 1, 10 and 100, less data")
    parser.add_argument("--sizes", nargs="+", type=int, help="default: 1 10 100 1000")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per size")
    parser.add_argument("--out", type=Path, default=Path("results/scale"))
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--memory", type=int, help=argparse.SUPPRESS)  # a child: one size
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.prepare:
        prepare(args.prepare, args.quick)
        return 0
    if args.memory:
        with tempfile.TemporaryDirectory(prefix="scale-memory-") as work:
            print(json.dumps(pool_memory(args.memory, args.out / "cache", Path(work))))
        return 0
    sizes = args.sizes or ([1, 10, 100] if args.quick else [1, 10, 100, 1000])
    cache = args.out / "cache"
    if not (cache / "texts.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, __file__, "--prepare", str(cache)]
        subprocess.run(command + (["--quick"] if args.quick else []), check=True)
    bases = sorted(cache.glob("*.safetensors"))
    texts = json.loads((cache / "texts.json").read_text())
    needed = BATCH * (2 * args.repeats + 1)
    texts = (texts * (needed // len(texts) + 1))[:needed] if len(texts) < needed else texts

    started = time.perf_counter()
    before = PeakMemory.resident()
    clock = Clock()
    backbone = Backbone.load()
    backbone_s = clock.seconds
    backbone.query_cache_size = 0  # every batch pays its query pass, as fresh requests do
    loaded_rss = PeakMemory.resident()
    # The backbone as it serves: after a pass over a batch (its working memory), with the
    # server's modules imported. Memory above this is what the pool and its paths take.
    import fastapi.testclient  # noqa: F401

    backbone.query(texts[:BATCH], with_last=True)
    backbone_rss = PeakMemory.resident()
    rows = []
    work = Path(tempfile.mkdtemp(prefix="scale-"))
    try:
        reference = None
        for size in sizes:
            row = measure(size, backbone, bases, texts, work / str(size), args.repeats, reference)
            if reference is None:  # the first (smallest) pool, kept to interleave with the rest
                reference = PromptPool.load(work / str(size) / "pool", backbone)
            row["peak_above_backbone_mb"] = round(row["peak_rss_mb"] - backbone_rss / 1e6, 1)
            smallest = rows[0]["peak_rss_mb"] if rows else row["peak_rss_mb"]
            row["peak_above_smallest_mb"] = round(row["peak_rss_mb"] - smallest, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(work / str(size) / "exports")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in rows:  # each size again in a fresh process, for memory alone
        command = [sys.executable, __file__, "--memory", str(row["tasks"]), "--out", str(args.out)]
        child = subprocess.run(command, check=True, capture_output=True, text=True)
        fresh = json.loads(child.stdout.strip().splitlines()[-1])
        row["fresh_rest_mb"], row["fresh_peak_mb"] = fresh["rest_mb"], fresh["peak_mb"]
        row["fresh_peak_above_smallest_mb"] = round(fresh["peak_mb"] - rows[0]["fresh_peak_mb"], 1)
        print(json.dumps({"tasks": row["tasks"], **fresh}), flush=True)
    result = {
        "command": "python " + " ".join(shlex.quote(part) for part in sys.argv),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), torch threads 1",
        "base_tasks": [path.stem for path in bases],
        "backbone_load_s": round(backbone_s, 2),
        "rss_before_backbone_mb": round(before / 1e6, 1),
        "rss_backbone_loaded_mb": round(loaded_rss / 1e6, 1),
        "rss_with_backbone_mb": round(backbone_rss / 1e6, 1),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "results.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(args.out / "report.md", render(result).encode())
    plot(result, args.out / "scale.png")
    return 0


def render(result: dict) -> str:
    rows = result["rows"]
    first, last = rows[0], rows[-1]
    lines = [
        "# A pool of 1 to 1,000 tasks",
        "",
        f"Made by: `{result['command']}` ({result['wall_seconds']:.0f} s; "
        f"{result['machine']}). Entries: the real tasks {result['base_tasks']} imported again "
        "under new names, every tensor nudged. Backbone (packaged MiniLM) load: "
        f"{result['backbone_load_s']:.2f} s; resident memory with it loaded "
        f"{result['rss_backbone_loaded_mb']:.0f} MB, after one pass over a batch (with the "
        f"server's modules imported) {result['rss_with_backbone_mb']:.0f} MB: the backbone's "
        "memory that 'above backbone' subtracts.",
        "",
        "| tasks | on disk | per task | selector stats/task | import s | save s | load s | "
        "first routed batch s | routed batch s (ratio to 1 task) | forced batch s (ratio) | "
        "add one s | server lists new task s | server answers it s | peak RSS MB | "
        f"above backbone at rest MB | above the {first['tasks']}-task pool's peak MB | "
        "serving's peak RSS MB | fresh process: peak MB (above its backbone at rest) | fresh "
        f"process: above the {first['tasks']}-task pool's peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['tasks']} | {row['bytes_on_disk'] / 1e6:.2f} MB | "
            f"{row['bytes_per_task'] / 1e3:.1f} KB | {row['selector_bytes_per_task'] / 1e3:.1f} KB"
            f" | {row['import_s']:.2f} | {row['save_s']:.2f} | {row['load_s']:.2f} | "
            f"{row['first_routed_batch_s']:.2f} | {row['routed_batch_s']:.3f} "
            f"({row['routed_batch_s'] / row['reference_routed_batch_s']:.2f}x) | "
            f"{row['forced_batch_s']:.3f} "
            f"({row['forced_batch_s'] / row['reference_forced_batch_s']:.2f}x) | "
            f"{row['add_one_s']:.2f} | {row['serve_listed_s']:.2f} | "
            f"{row['serve_new_task_s']:.2f} | {row['peak_rss_mb']:.0f} | "
            f"{row['peak_above_backbone_mb']:.0f} | {row['peak_above_smallest_mb']:.0f} | "
            f"{row['serve_peak_rss_mb']:.0f} | {row['fresh_peak_mb']:.0f} "
            f"({row['fresh_peak_mb'] - row['fresh_rest_mb']:.0f}) | "
            f"{row['fresh_peak_above_smallest_mb']:.0f} |"
        )
    lines += [
        "",
        f"Ratios: each size's batches against the same batches on the {first['tasks']}-task "
        "pool, timed in turn (interleaved), medians. At "
        f"{last['tasks']} tasks: routed {last['routed_batch_s'] / last['reference_routed_batch_s']:.2f}x, "
        f"forced {last['forced_batch_s'] / last['reference_forced_batch_s']:.2f}x. Loading "
        "includes building the selector's pooled statistics (the sum of the tasks' covariance "
        "factors), so the first routed batch should cost what the others do.",
        "",
        f"Adding one task to the saved pool of {last['tasks']} wrote: {last['add_one_wrote']} "
        f"(removed: {last['add_one_removed'] or 'nothing'}).",
        "",
        "Batch times are medians over repeats of 32 fresh test texts (64 tokens at most, 16 prompt "
        "vectors). Peak RSS covers import, save, load, predict and adding a task (serving "
        "on its own, last column), sampled every 20 ms; between the import and the load, and "
        "before serving, the dropped pool is collected and freed memory handed back "
        "(malloc_trim); the smallest reference pool stays loaded throughout. 'Above backbone at "
        "rest' subtracts the process's resident memory once the backbone ran one batch (see "
        f"above); 'above the {first['tasks']}-task pool's peak' subtracts the same work's peak "
        "on the smallest pool, whose own tensors are a few hundred KB: the backbone's working "
        "memory as it predicts is in both. The 'fresh process' columns run import, save, load, "
        "predict and adding a task again for each size in a process of its own, which holds no "
        "earlier size's freed memory, server threads or reference pool. The machine is shared: "
        "compare sizes within "
        "this run.",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result["rows"]
    sizes = [row["tasks"] for row in rows]

    def series(key: str, scale: float = 1.0) -> list[float]:
        return [row[key] / scale for row in rows]

    def ratio(key: str) -> list[float]:
        return [row[key] / row[f"reference_{key}"] for row in rows]

    panels: list[tuple[str, dict[str, list[float]]]] = [
        ("bytes per task (KB)", {"on disk": series("bytes_per_task", 1e3)}),
        ("on disk (MB)", {"": series("bytes_on_disk", 1e6)}),
        (
            "load (s)",
            {"load": series("load_s"), "first routed batch": series("first_routed_batch_s")},
        ),
        (
            "peak RSS above (MB)",
            {
                "backbone at rest": series("peak_above_backbone_mb"),
                "smallest pool's peak": series("peak_above_smallest_mb"),
                "smallest pool's peak, fresh process": series("fresh_peak_above_smallest_mb"),
            },
        ),
        (
            "batch of 32 against 1 task (x)",
            {"routed": ratio("routed_batch_s"), "forced": ratio("forced_batch_s")},
        ),
        (
            "batch of 32 (s)",
            {"routed": series("routed_batch_s"), "forced": series("forced_batch_s")},
        ),
        ("add one task + save (s)", {"": series("add_one_s")}),
        (
            "server: new task (s)",
            {"listed": series("serve_listed_s"), "answered": series("serve_new_task_s")},
        ),
    ]
    figure = Figure(figsize=(15, 6.5))
    for axes, (title, lines) in zip(figure.subplots(2, 4).flat, panels):
        for label, values in lines.items():
            axes.plot(sizes, values, "-o", label=label or None)
        axes.set_xscale("log")
        axes.set_ylim(bottom=0)
        axes.set(title=title, xlabel="tasks in the pool")
        if len(lines) > 1:
            axes.legend(fontsize=7)
    figure.tight_layout()
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())

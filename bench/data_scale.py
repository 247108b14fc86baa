"""Data at production size: the encoded dataset's build, second start, sharing, training speed and out-of-core run.

    python bench/data_scale.py prepare --data DIR [--data DIR ...]   # fresh build per DIR: seconds, peak RSS
    python bench/data_scale.py encode-ab --data DIR [--rounds 3]     # build vs the in-memory read+fit+encode
    python bench/data_scale.py second-start --data DIR               # map + study + first trial, data built
    python bench/data_scale.py throughput --data DIR [--rounds 2]    # mapped vs in-memory samples/s, A/B rounds
    python bench/data_scale.py epoch --data DIR [--cap-mib N]        # one epoch from the mapped dataset, test AUC,
                                                                      # optionally under a cgroup v1 memory cap
    python bench/data_scale.py workers --data DIR [--seconds 90]     # PSS of 1 worker vs 3 local workers

DIR holds Criteo-format train.tsv + test.tsv (`deepfm data synth --rows N --out DIR`). Each measurement runs in
a fresh child process (peak RSS from getrusage, PSS from /proc/PID/smaps_rollup). Encoded datasets go under
/tmp/deepfm-bench-encoded unless --encoded-dir says otherwise. Writes JSON to --out or $OUT when set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, write_json

ENCODED = Path("/tmp/deepfm-bench-encoded")


PRELUDE = ("import json, resource\n"
           "def emit(d):\n    d['peak_rss_mib'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
           "    print(json.dumps(d, default=float))\n")


def child(code: str, *args: str, cgroup: str | None = None, cwd: Path = ROOT) -> dict:
    """Run `code` in a fresh Python (optionally inside a cgroup v1 memory group); the JSON it emits, with its
    own peak RSS."""
    cmd = [sys.executable, "-c", PRELUDE + code, *args]
    def join_cgroup() -> None:
        Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))

    preexec = join_cgroup if cgroup else None
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, preexec_fn=preexec,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"})
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spec_code(data: str, encoded: str) -> str:
    return (f"from deepfm_tuner.model.data.source import DataSpec\n"
            f"spec = DataSpec(train={data + '/train.tsv'!r}, test={data + '/test.tsv'!r}, format='criteo', "
            f"encoded_dir={encoded!r})\n")


def cmd_prepare(args) -> dict:
    results = []
    for data in args.data:
        encoded = str(ENCODED / f"prepare-{Path(data).name}")
        shutil.rmtree(encoded, ignore_errors=True)
        code = spec_code(data, encoded) + (
            "import json, time\nt = time.perf_counter(); p = spec.prepare()\n"
            "emit({'seconds': time.perf_counter() - t, 'rows': len(p.train) + len(p.val) + len(p.test),"
            " 'folder': str(p.folder)})")
        out = child(code)
        size = sum(f.stat().st_size for f in Path(out["folder"]).rglob("*") if f.is_file())
        results.append({"data": data, "rows": out["rows"], "seconds": round(out["seconds"], 2),
                        "seconds_per_million": round(out["seconds"] / out["rows"] * 1e6, 2),
                        "peak_rss_mib": out["peak_rss_mib"], "encoded_mib": round(size / 2**20)})
        print(results[-1], flush=True)
    return {"prepare": results}


OLD_PATH_CODE = (
    "import sys, time\nfrom deepfm_tuner.model.data.frames import concat_frames, read_table, split_rows\n"
    "from deepfm_tuner.model.data.encoder import FeatureEncoder\nfrom deepfm_tuner.model.data.schema import criteo_schema\n"
    "t = time.perf_counter()\n"
    "frame = concat_frames([read_table(f, 'criteo') for f in (spec.train, spec.test)])\n"
    "split = split_rows(len(frame), 0.1, 0.0, 42)\n"
    "encoder = FeatureEncoder(criteo_schema()).fit(frame, rows=split.train)\n"
    "features = encoder.transform(frame)\n"
    "emit({'path': 'in-memory (read_table + fit + transform)', 'seconds': time.perf_counter() - t,"
    " 'rows': len(frame)})")


def cmd_encode_ab(args) -> dict:
    """The encoded-dataset build against the in-memory path it replaces (whole-file read + fit + transform),
    on the same files, alternated, each in a fresh process."""
    data = args.data[0]
    encoded = str(ENCODED / f"ab-{Path(data).name}")
    new_code = ("import shutil, time\nshutil.rmtree(spec.encoded_dir, ignore_errors=True)\nt = time.perf_counter()\n"
                "p = spec.prepare()\nemit({'path': 'encoded dataset (streamed build)', 'seconds': time.perf_counter() - t,"
                " 'rows': len(p.train) + len(p.val) + len(p.test)})")
    runs = []
    for i in range(args.rounds):
        for code in ((new_code, OLD_PATH_CODE) if i % 2 == 0 else (OLD_PATH_CODE, new_code)):
            runs.append(child(spec_code(data, encoded) + code))
            print(runs[-1], flush=True)
    shutil.rmtree(encoded, ignore_errors=True)
    return {"encode_ab": runs}


def cmd_second_start(args) -> dict:
    """Data step (a hit) -> study ready -> the first trial's training starts, in a fresh process: for a new study
    on the same files and for a resume, over stores a first run has created (as every start after the first)."""
    encoded = str(ENCODED / f"prepare-{Path(args.data[0]).name}")
    folder = Path(tempfile.mkdtemp(prefix="deepfm-second-start-"))
    code = (
        "import sys, time\nfrom deepfm_tuner.model.data.tensors import PreparedData\n"
        "import deepfm_tuner.tuner.trials.objective as objective\nfrom deepfm_tuner.tuner.spec.study import load_study\nfrom deepfm_tuner.tuner.pipeline.tune import load_data, tune\n"
        "marks = {}\n"
        "class FirstTrial(Exception): pass\n"
        "def first_train(*a, **k):\n    marks['first_trial'] = time.perf_counter(); raise FirstTrial\n"
        "objective.train = first_train\n"
        "spec = load_study(sys.argv[1])\nlog = []\nt0 = time.perf_counter()\ndata = load_data(spec, log.append)\n"
        "t1 = time.perf_counter()\n"
        "try:\n    tune(spec, storage='sqlite:///optuna.db', tracking_uri='sqlite:///mlflow.db', promote=False,"
        " data=data, summary=False)\nexcept Exception:\n    pass\n"
        "emit({'study': sys.argv[1], 'data_step_seconds': t1 - t0, 'data_step_to_first_trial_seconds':"
        " marks['first_trial'] - t0, 'log': log})")
    runs = []
    for name in ("first", "second", "first"):  # stores created; a new study on the same files; a resume
        (folder / f"{name}.yaml").write_text(
            f"study: {{name: {name}, n_trials: 9, promote: false}}\n"
            f"data: {{train: {args.data[0]}/train.tsv, test: {args.data[0]}/test.tsv, format: criteo, "
            f"encoded_dir: {encoded}}}\ntraining: {{max_epochs: 1}}\n")
        runs.append(child(code, f"{name}.yaml", cwd=folder))
        print(runs[-1], flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    return {"second_start": {"stores_created": runs[0], "new_study": runs[1], "resume": runs[2]}}


TRAIN_CODE = (
    "import json, sys, time, numpy as np, torch\n"
    "from deepfm_tuner.model.config import PolicyConfig, TrainConfig\nfrom deepfm_tuner.model.train import train, evaluate\n"
    "mode, threads, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
    "p = spec.prepare()\n"
    "if mode == 'memory':\n"
    "    from deepfm_tuner.model.data.frames import Split, read_table, concat_frames\n    from deepfm_tuner.model.data.tensors import prepare\n"
    "    frame = concat_frames([read_table(f, 'criteo') for f in (spec.train, spec.test)])\n"
    "    codes = np.load(p.folder / 'split.npy')\n"
    "    p = prepare(frame, p.encoder.schema, Split(*(np.flatnonzero(codes == i) for i in range(3))))\n"
    "    del frame\n"
    "control = TrainConfig(batch_size=4096, max_epochs=epochs, patience=epochs, seed=0, device='cpu', threads=threads)\n"
    "r = train(p, PolicyConfig(), control)\n"
    "auc, logloss = evaluate(r.model, p.test)\n"
    "from deepfm_tuner.model.train import shuffle_block_rows\n"
    "emit({'mode': mode, 'train_rows': len(p.train), 'samples_per_second': len(p.train) * len(r.history)"
    " / r.train_seconds, 'train_seconds': r.train_seconds, 'test_auc': auc, 'test_logloss': logloss,"
    " 'block_rows': shuffle_block_rows(p.train)})")


def cmd_throughput(args) -> dict:
    data = args.data[0]
    code = spec_code(data, str(ENCODED / f"prepare-{Path(data).name}")) + TRAIN_CODE
    rounds = []
    for i in range(args.rounds):
        for mode in (("mapped", "memory") if i % 2 == 0 else ("memory", "mapped")):  # A/B alternated
            out = child(code, mode, str(args.threads), "1")
            rounds.append(out)
            print(out, flush=True)
    mapped = [r["samples_per_second"] for r in rounds if r["mode"] == "mapped"]
    memory = [r["samples_per_second"] for r in rounds if r["mode"] == "memory"]
    return {"throughput": rounds, "mapped_over_memory": sum(mapped) / sum(memory)}


def cmd_epoch(args) -> dict:
    data = args.data[0]
    code = spec_code(data, str(ENCODED / f"prepare-{Path(data).name}")) + TRAIN_CODE
    cgroup = None
    if args.cap_mib:
        cgroup = f"/sys/fs/cgroup/memory/deepfm-bench-{os.getpid()}"
        os.makedirs(cgroup, exist_ok=True)
        Path(cgroup, "memory.limit_in_bytes").write_text(str(args.cap_mib << 20))
    try:
        out = child(code, "mapped", str(args.threads), "1", cgroup=cgroup)
        if cgroup:
            out["cgroup_max_usage_mib"] = int(Path(cgroup, "memory.max_usage_in_bytes").read_text()) / 2**20
            out["cgroup_failcnt"] = int(Path(cgroup, "memory.failcnt").read_text())
    finally:
        if cgroup:
            os.rmdir(cgroup)  # empty again: its one process has exited
    out["cap_mib"] = args.cap_mib
    return {"epoch": out}


def pss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cmd_workers(args) -> dict:
    """`deepfm tune --workers N` on the data (already encoded); after --seconds of training, the workers' PSS."""
    data = args.data[0]
    encoded = str(ENCODED / f"prepare-{Path(data).name}")
    results = {}
    for workers in (1, 3):
        folder = Path(tempfile.mkdtemp(prefix=f"deepfm-workers{workers}-"))
        (folder / "study.yaml").write_text(
            f"study: {{name: w{workers}, n_trials: {workers}, promote: false}}\n"
            f"data: {{train: {data}/train.tsv, test: {data}/test.tsv, format: criteo, encoded_dir: {encoded}}}\n"
            f"training: {{max_epochs: 1}}\n")
        deepfm = str(Path(sys.executable).with_name("deepfm"))
        proc = subprocess.Popen([deepfm, "tune", "study.yaml", "--workers", str(workers), "--threads", "1"],
                                cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}, start_new_session=True)
        samples = []
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(5)
            pids = worker_pids(proc.pid, workers)
            samples.append({"t": round(args.seconds - (deadline - time.monotonic())),
                            "pss_mib": round(sum(pss_mib(p) for p in pids)),
                            "rss_mib": round(sum(rss_mib(p) for p in pids)), "workers": len(pids)})
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)
        results[workers] = {"last": samples[-1] if samples else None, "samples": samples}
        print(workers, results[workers]["last"], flush=True)
    ratio = results[3]["last"]["pss_mib"] / results[1]["last"]["pss_mib"]
    return {"workers": results, "pss_3_over_1": ratio}


def worker_pids(root: int, workers: int) -> list[int]:
    """The processes that train: the one `deepfm tune` process, or the N workers under a coordinator."""
    import psutil

    proc = psutil.Process(root)
    if workers == 1:
        return [root]
    return [c.pid for c in proc.children(recursive=True) if "deepfm_tuner.tuner.cli" in " ".join(c.cmdline())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("prepare", "encode-ab", "second-start", "throughput", "epoch", "workers"))
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cap-mib", type=int, default=0)
    parser.add_argument("--seconds", type=int, default=90)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    run = {"prepare": cmd_prepare, "encode-ab": cmd_encode_ab, "second-start": cmd_second_start, "throughput": cmd_throughput,
           "epoch": cmd_epoch, "workers": cmd_workers}[args.what]
    results = {"machine": machine(), "started": started, **run(args)}
    write_json(results, f"data_scale_{args.what}.json", args.out)


if __name__ == "__main__":
    main()

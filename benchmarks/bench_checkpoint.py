"""Benchmark: add_reward's checkpoint I/O is linear in the number of records.

Scores a synthetic results file of n and of 4n records with the `length` value (no model: the run is
pure record-store I/O) through the real RewardProcessor.add_reward, and counts the bytes the process
writes (Linux /proc/self/io `wchar`: every write() call, journal, final temp file and sidecar). The
baseline, measured in the same run on the same records, is the protocol add_reward used before the
journal: the whole temp file rewritten atomically after every batch (quadratic: per-record bytes grow
with n). Prints bytes and bytes per record for both, the baseline's 4n/n per-record ratio (≈ 4), and
ends with `ratio=<per-record bytes at 4n / per-record bytes at n>` of add_reward (≈ 1 means linear).

Usage: python benchmarks/bench_checkpoint.py [--n=1000] [--batch_size=16]
"""
import contextlib
import io
import math
import os
import shutil
import sys
import tempfile


from mapalign import cli  # noqa: E402


def written_bytes():
    """Bytes this process has passed to write() so far (/proc/self/io wchar)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("wchar")).split()[1])


def make_file(folder, n):
    from mapalign import records
    recs = [{"prompt": f"Question number {i}: how do I bake bread?", "generated": f"Question number {i}: how do I "
             f"bake bread? Mix flour, water, salt and yeast, then wait {i % 9} hours.", "continuation":
             f"Mix flour, water, salt and yeast, then wait {i % 9} hours.", "id": f"{i}-0", "prompt_id": i,
             "sample_id": 0} for i in range(n)]
    path = os.path.join(folder, "bench-data.json")
    records.save_records(recs, path)
    return path


def journal_run(path, batch_size):
    """Bytes written by RewardProcessor.add_reward (records.Checkpoint journal)."""
    from mapalign.rewarding import RewardProcessor
    before = written_bytes()
    with contextlib.redirect_stdout(io.StringIO()):
        RewardProcessor(file_path=path, batch_size=batch_size, progress=False).add_reward("length")
    return written_bytes() - before


def rewrite_run(path, batch_size):
    """Bytes written by the previous protocol: the temp file rewritten atomically after every batch."""
    import numpy as np

    from mapalign import records
    from mapalign import values
    from mapalign.merging import temp_reward_path
    recs = records.load_records(path)
    scorer = values.load_scorer("length", batch_size=batch_size)
    temp = temp_reward_path(path, "length") + ".baseline.json"
    entries = []
    before = written_bytes()
    for lo in range(0, len(recs), batch_size):
        batch = recs[lo:lo + batch_size]
        scores = np.asarray(scorer([r["prompt"] for r in batch], [r["continuation"] for r in batch],
                                   full_texts=[r["generated"] for r in batch]), dtype=np.float64)
        for j, (r, x) in enumerate(zip(batch, scores)):
            entries.append({"id": records.record_id(r, lo + j), "prompt": r["prompt"],
                            "length": float(x) if math.isfinite(x) else None})
        records.save_json_atomic(entries, temp)
    return written_bytes() - before


def main(n=1000, batch_size=16):
    if not os.path.exists("/proc/self/io"):
        sys.exit("bench_checkpoint needs Linux /proc/self/io to count written bytes")
    rows = {}
    for size in (n, 4 * n):
        for name, run in (("add_reward (journal)", journal_run), ("baseline (rewrite per batch)", rewrite_run)):
            folder = tempfile.mkdtemp(prefix="bench_checkpoint_")
            try:
                path = make_file(folder, size)
                rows[name, size] = run(path, batch_size)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    print(f"records      method                          bytes written   bytes/record   (batch_size={batch_size})")
    for (name, size), b in rows.items():
        print(f"{size:>7d}      {name:<30s}  {b:>13,d}   {b / size:>12.1f}")
    per = {name: (rows[name, 4 * n] / (4 * n)) / (rows[name, n] / n)
           for name in ("add_reward (journal)", "baseline (rewrite per batch)")}
    print(f"per-record bytes, 4n vs n: baseline {per['baseline (rewrite per batch)']:.2f} (quadratic would be 4), "
          f"add_reward {per['add_reward (journal)']:.2f} (linear would be 1)")
    print(f"ratio={per['add_reward (journal)']:.2f}")


if __name__ == "__main__":
    cli.main(main)

"""The record store: reading, validating and atomically writing MAP results files, their metadata
sidecars, and the one checkpoint/resume protocol of every long sampling or scoring job.

A results file is a JSON array (indent 4, as the original's json.dump wrote it) or, when its name ends
in `.jsonl`, JSON Lines (one record per line). Every write keeps the file's format, and a JSON array
read and written back unchanged is byte-identical to the original project's files. One object
("record") per generated sample, in prompt order. The original MAP keys are kept and a few are added:

    prompt        the prompt text fed to the model (before any chat template)
    generated     prompt + continuation, as the original stored it
    continuation  the generated text alone (the original re-derived it by slicing `generated`)
    id            unique record id "{prompt_id}-{sample_id}"
    prompt_id     index of the prompt in its prompt source (pairs records across models)
    sample_id     index of the sample among that prompt's samples (0 when one per prompt)
    <value>       one float per scored value, named exactly after the value ("humor", ...)

Files from the original project carry only prompt/generated/<values>; every reader here accepts
them, deriving ids from positions. A metadata sidecar `{stem}.meta.json` next to a results file
records how it was made (model, seed, sampling config, ...).

Checkpoints (`Checkpoint`): a job writing `out.json` journals its records batch by batch to
`out.json.journal.jsonl` (append-only, fsynced per batch; first line the job's fingerprint), resumes
from it only when the fingerprint is identical, and at the end writes `out.json` atomically and
deletes the journal. I/O is linear in the output's size.
"""
import datetime
import hashlib
import json
import math
import os
import tempfile

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: journals are then not locked against a second writer
    fcntl = None

from mapalign.errors import InputError


class RecordsError(InputError):
    """A results file or its contents cannot be used; the message names the input and the fix."""


class CheckpointMismatch(RecordsError):
    """A journal or finished output was made with other settings than this run (names the field)."""


# ---------------------------------------------------------------------------------------------
# Reading and validating results files

def results_format(path):
    """"jsonl" for names ending in .jsonl, else "json" (a JSON array)."""
    return "jsonl" if str(path).endswith(".jsonl") else "json"


def _read_text(path, what):
    """The UTF-8 text of a file; RecordsError naming `path` when it is missing, a directory, empty,
    not UTF-8 or starts with a byte-order mark."""
    if os.path.isdir(path):
        raise RecordsError(f"{what} {path!r} is a directory, not a file; pass the file inside it.")
    if not os.path.isfile(path):
        raise RecordsError(f"{what} not found: {path!r}.")
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):
        raise RecordsError(f"{what} {path!r} starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without "
                           "BOM (e.g. `sed -i '1s/^\\xEF\\xBB\\xBF//' FILE`).")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordsError(f"{what} {path!r} is not UTF-8 text (byte {e.start}); re-save it as UTF-8.") from None
    if not text.strip():
        raise RecordsError(f"{what} is empty: {path!r}. Re-run the step that writes it.")
    return text


def _kind(x):
    if x is None:
        return None
    if isinstance(x, bool):
        return "bool"
    if isinstance(x, (int, float)):
        return "number"
    return type(x).__name__


def _where(path, index, record):
    rid = record.get("id") if isinstance(record, dict) else None
    return f"record {index}" + (f" (id {rid!r})" if rid is not None else "") + f" of {path!r}"


TEXT_KEYS = ("prompt", "generated", "continuation")
INT_KEYS = ("prompt_id", "sample_id", "chosen_index")


def validate_records(recs, path, required=("prompt",)):
    """Check what every reader relies on; raise RecordsError naming `path` and the first bad record.

    recs: the parsed file (must be a non-empty list of objects). required: keys every record must
    have. Checks: text keys are strings, ids are strings or integers and unique, prompt_id/sample_id
    are integers, numbers are finite (JSON NaN/Infinity are refused), and a key holding a number in
    one record holds a number (or null) in all.
    """
    if not isinstance(recs, list):
        raise RecordsError(f"results file {path!r} must hold a JSON array of objects (one per sample); "
                           f"it holds a {type(recs).__name__}.")
    if not recs:
        raise RecordsError(f"results file holds no records: {path!r}.")
    seen_ids, kinds = {}, {}
    for i, r in enumerate(recs):
        if not isinstance(r, dict):
            raise RecordsError(f"record {i} of {path!r} is a {type(r).__name__}, not an object; each record "
                               "must be a JSON object (one per sample).")
        for key in required:
            if key not in r:
                raise RecordsError(f"{_where(path, i, r)} has no {key!r}; every record needs one.")
        for key in TEXT_KEYS:
            if key in r and not isinstance(r[key], str):
                raise RecordsError(f"{_where(path, i, r)}: {key!r} must be a string, got {_kind(r[key])} "
                                   f"{str(r[key])[:40]!r}.")
        for key in INT_KEYS:
            if key in r and (not isinstance(r[key], int) or isinstance(r[key], bool)):
                raise RecordsError(f"{_where(path, i, r)}: {key!r} must be an integer, got {r[key]!r}.")
        if "id" in r:
            rid = r["id"]
            if not isinstance(rid, (str, int)) or isinstance(rid, bool):
                raise RecordsError(f"record {i} of {path!r}: 'id' must be a string or integer, got {rid!r}.")
            if str(rid) in seen_ids:
                raise RecordsError(f"{path!r}: records {seen_ids[str(rid)]} and {i} have the same id {rid!r}; "
                                   "ids must be unique (regenerate the file or fix the ids).")
            seen_ids[str(rid)] = i
        for key, x in r.items():
            kind = _kind(x)
            if kind == "number" and not math.isfinite(x):
                raise RecordsError(f"{_where(path, i, r)}: {key!r} is {x} (not finite); re-score it or drop the "
                                   "record.")
            if kind is None or key in TEXT_KEYS:
                continue
            first = kinds.setdefault(key, (kind, i))
            if "number" in (kind, first[0]) and kind != first[0]:
                raise RecordsError(f"{_where(path, i, r)}: {key!r} is a {kind} ({str(x)[:40]!r}) but a {first[0]} "
                                   f"in record {first[1]}; a reward must be a number in every record.")
    return recs


def load_records(path, required=("prompt",)):
    """Read and validate a results file (JSON array, or JSON Lines when the name ends in .jsonl).

    required: keys every record must hold (default: prompt). Returns the list of record dicts.
    Raises RecordsError naming the file (and the record, where one is at fault) for a missing, empty,
    malformed or invalid file; see validate_records.
    """
    text = _read_text(path, "results file")
    try:
        if results_format(path) == "jsonl":
            recs = []
            for n, line in enumerate(text.split("\n"), 1):
                if line.strip():
                    try:
                        recs.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise RecordsError(f"results file {path!r} line {n} (record {len(recs)}) is not valid JSON "
                                           f"(column {e.colno}: {e.msg}). The file may be half-written; "
                                           "regenerate it.") from None
        else:
            recs = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordsError(f"results file is not valid JSON: {path!r} (line {e.lineno}, column {e.colno}: "
                           f"{e.msg}). The file may be half-written; regenerate it.") from None
    return validate_records(recs, path, required=required)


# ---------------------------------------------------------------------------------------------
# Writing

def _umask_mode():
    """Permissions a plain open() would give a new file (mkstemp makes files owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(text, path):
    """Write a text file through a temp file in the same folder and a rename, so a reader never
    sees a half-written file (a kill leaves the old file intact). Returns the bytes written."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    data = text.encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return len(data)


def save_json_atomic(obj, path, indent=4):
    """Write `obj` as JSON (indent 4, as the original) to `path` atomically."""
    return write_text_atomic(json.dumps(obj, indent=indent, ensure_ascii=False), path)


def dumps_records(recs, fmt):
    """Records as the text of a results file of format "json" (an array, indent 4, ASCII escapes: exactly
    what the original's json.dump(..., indent=4) wrote) or "jsonl" (one compact object per line)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    return json.dumps(recs, indent=4)


def save_records(recs, path):
    """Write records to `path` atomically in the format its name says (.jsonl or a .json array).
    Returns the bytes written."""
    return write_text_atomic(dumps_records(recs, results_format(path)), path)


# ---------------------------------------------------------------------------------------------
# Metadata sidecars

def metadata_path(results_path):
    """The sidecar of `results/x.json` (or `x.jsonl`) is `results/x.meta.json`; of any other file
    `{file}.meta.json`."""
    for ext in (".jsonl", ".json"):
        if results_path.endswith(ext):
            return results_path[:-len(ext)] + ".meta.json"
    return results_path + ".meta.json"


def load_metadata(results_path):
    """The sidecar's dict, or {} when the file has none (e.g. files from the original project).
    Raises RecordsError naming the sidecar when it is unreadable or not a JSON object."""
    path = metadata_path(results_path)
    if not os.path.exists(path):
        return {}
    text = _read_text(path, "metadata sidecar")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordsError(f"metadata sidecar {path!r} is not valid JSON (line {e.lineno}, column {e.colno}: "
                           f"{e.msg}). Delete it (the results file stays usable, without its provenance) or "
                           "restore it.") from None
    if not isinstance(meta, dict):
        raise RecordsError(f"metadata sidecar {path!r} must hold a JSON object; it holds a {type(meta).__name__}.")
    return meta


def save_metadata(results_path, metadata):
    save_json_atomic(metadata, metadata_path(results_path), indent=2)


def timestamp():
    """Now in UTC, ISO 8601 to the second with its zone ("2026-11-28T10:30:38+00:00"): the one stamp of
    every sidecar, checkpoint, training metadata and pipeline state file."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def file_stem(path):
    """A results file's path without its ".json" (other paths as given): the prefix of the files derived
    from it (level CSVs, histograms, λ files)."""
    return path[:-len(".json")] if path.endswith(".json") else path


def lam_string(lam):
    """λ (or a palette) as the original wrote it in file names, logs and alignValues.txt: three decimals,
    comma-joined ("1.548,1.148"). File names hold it (shards, MAP-F model folders, level tables), so
    existing results are found again only while this never changes."""
    return ",".join(f"{float(x):.3f}" for x in np.ravel(lam))


# ---------------------------------------------------------------------------------------------
# Fingerprints: everything that determines a job's output

def file_sha256(path, chunk=1 << 20):
    """sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def content_sha256(recs, keys=("id", "prompt", "generated", "continuation")):
    """sha256 (hex) of the given keys of every record, in order (record ids default to positions).

    A job that reads only these keys (a scorer reads ids and texts) fingerprints its input with this
    instead of file_sha256, so adding other reward columns to the file does not block its resume."""
    digest = hashlib.sha256()
    for j, r in enumerate(recs):
        row = {k: (record_id(r, j) if k == "id" else r.get(k)) for k in keys}
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


def canonical(obj):
    """`obj` as JSON would give it back (tuples -> lists, other objects -> str): what a journal stores."""
    return json.loads(json.dumps(obj, default=str))


class _Absent:
    def __repr__(self):
        return "<absent>"


_MISSING = _Absent()


def first_difference(old, new, prefix=""):
    """(field, old value, new value) of the first difference between two fingerprints (dotted path
    into nested dicts; a missing field reads as <absent>), or None when equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(new) + [k for k in old if k not in new]:
            a, b = old.get(key, _MISSING), new.get(key, _MISSING)
            found = first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        return None
    if old == new and type(old) is type(new):
        return None
    return prefix.rstrip("."), old, new


# ---------------------------------------------------------------------------------------------
# The checkpoint/resume protocol

JOURNAL_SUFFIX = ".journal.jsonl"


def journal_path(output_path):
    """The journal of `out.json` is `out.json.journal.jsonl`."""
    return str(output_path) + JOURNAL_SUFFIX


class Checkpoint:
    """Resumable output of a sampling or scoring job: an append-only journal, then one atomic write.

        ckpt = Checkpoint("results/x.json", fingerprint, overwrite=False)
        if not ckpt.complete:
            todo = items[len(ckpt.done):]           # ckpt.done: records journaled by killed runs
            for batch in ...: ckpt.append(new_records, state={...})
            ckpt.finalize(metadata={...})           # writes x.json (+ x.meta.json), deletes the journal

    output_path: the final results file (.json array or .jsonl, kept as named).
    fingerprint: JSON-able dict of everything that determines the output (input hash, model identity,
        sampling config, seed, value spec, ...); stored as the journal's first line and in the sidecar.
    overwrite: discard an existing journal, and allow replacing an output made with other settings.

    On open (the journal is locked against a second writer):
    * journal with an identical fingerprint: `done` holds its records in order, `state` the state of
      its last batch, `resumed` is True. A torn last line (a kill mid-write) is dropped.
    * journal with another fingerprint: CheckpointMismatch naming the first differing field (old vs
      new) and the `--overwrite=True` fix (a journal without records is simply discarded).
    * any other unreadable line: RecordsError naming the journal and the line.
    * no journal, output exists: `complete` is True when its sidecar holds this fingerprint (nothing to
      do; fields an older version did not record are taken as unknown, with a note), else
      CheckpointMismatch (the output was made otherwise, or records no fingerprint) unless overwrite.
    Journal lines after the first are `{"records": [...], "state": {...}}`, one per append.
    """

    def __init__(self, output_path, fingerprint, overwrite=False):
        self.output_path = str(output_path)
        self.journal_path = journal_path(self.output_path)
        self.fingerprint = canonical(fingerprint)
        self.overwrite = bool(overwrite)
        self.done, self.state = [], None
        self.resumed = self.complete = False
        self.bytes_written = 0  # journal lines and the final file (benchmarks/bench_checkpoint.py)
        self._records = []  # done + appended
        self._has_header = self._locked = False
        for path in (self.output_path, self.journal_path):
            if os.path.isdir(path):
                raise RecordsError(f"{path!r} is a directory; it must be a file (move the directory away).")
        folder = os.path.dirname(os.path.abspath(self.journal_path))
        os.makedirs(folder, exist_ok=True)
        self._file = open(self.journal_path, "a+b")
        try:
            self._lock()
            if self.overwrite:
                self._file.truncate(0)
            else:
                self._read_journal()
            if not self._has_header:
                self._check_existing_output()
        except BaseException:
            self.close()
            raise

    # -- opening

    def _lock(self):
        if fcntl is not None:
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RecordsError(f"another process is writing {self.output_path!r} (its journal "
                                   f"{self.journal_path!r} is locked); wait for it or stop it.") from None
        self._locked = True

    def _read_journal(self):
        self._file.seek(0)
        data = self._file.read()
        if not data:
            return
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a complete line
        if torn:
            # a kill mid-write left an unterminated last line: drop it (its batch is redone)
            self._file.truncate(len(data) - len(torn))
        if not lines:
            return
        header = self._parse(lines[0], 1)
        if not isinstance(header, dict) or not isinstance(header.get("fingerprint"), dict):
            raise RecordsError(f"journal {self.journal_path!r} line 1 is not a fingerprint line; it is not a "
                               "journal of this toolkit. Move it away or pass --overwrite=True.")
        batches = []
        for n, line in enumerate(lines[1:], 2):
            entry = self._parse(line, n)
            if not isinstance(entry, dict) or not isinstance(entry.get("records"), list) \
                    or not all(isinstance(r, dict) for r in entry["records"]):
                raise RecordsError(f"journal {self.journal_path!r} line {n} is not a batch of records "
                                   "({\"records\": [...]}); the journal is corrupt. Delete it or pass "
                                   "--overwrite=True to start over.")
            batches.append(entry)
        diff = first_difference(header["fingerprint"], self.fingerprint)
        if diff and not batches:
            self._file.truncate(0)  # nothing journaled yet: nothing to lose
            return
        if diff:
            field, old, new = diff
            raise CheckpointMismatch(
                f"cannot resume {self.output_path!r}: its journal {self.journal_path!r} was written with "
                f"{field}={old!r}, this run has {field}={new!r}. Re-run with the journal's settings to resume it, "
                "or pass --overwrite=True to discard it and start over.")
        for entry in batches:
            self.done.extend(entry["records"])
            if "state" in entry:
                self.state = entry["state"]
        self._records = list(self.done)
        self._has_header = True
        self.resumed = bool(self.done)

    def _parse(self, line, n):
        try:
            return json.loads(line.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RecordsError(f"journal {self.journal_path!r} line {n} is corrupt ({e}); only an unterminated "
                               "last line can come from a kill, so the file was damaged. Delete it or pass "
                               "--overwrite=True to start over.") from None

    def _check_existing_output(self):
        if not os.path.exists(self.output_path) or self.overwrite:
            return
        meta = load_metadata(self.output_path)
        old = meta.get("fingerprint")
        if old is None:
            raise CheckpointMismatch(
                f"{self.output_path!r} already exists and its sidecar records no settings fingerprint "
                f"({metadata_path(self.output_path)!r}), so it cannot be checked against this run. Pass "
                "--overwrite=True to replace it, or choose another output.")
        # an output of an older version lacks the fields added since (e.g. model_identity): those are
        # unknown rather than different, so it still counts as complete, with a note
        unrecorded = [k for k in self.fingerprint if k not in old]
        diff = first_difference(old, {k: v for k, v in self.fingerprint.items() if k in old})
        if diff:
            field, a, b = diff
            raise CheckpointMismatch(
                f"{self.output_path!r} already exists, made with {field}={a!r}; this run has {field}={b!r}. "
                "Pass --overwrite=True to replace it, or choose another output.")
        if unrecorded:
            print(f"note: {self.output_path} was made by an older version that did not record {unrecorded}; taking "
                  "it as complete (pass --overwrite=True to regenerate it).")
        if meta.get("complete", True) is False:
            raise CheckpointMismatch(f"{self.output_path!r} exists but its sidecar marks it incomplete (an older "
                                     "checkpoint format); pass --overwrite=True to regenerate it.")
        self.complete = True

    # -- writing

    @property
    def records(self):
        """All records so far: `done` plus those appended by this run, in order."""
        return self._records

    def append(self, records, state=None):
        """Journal one batch of records (and an optional JSON-able `state`, e.g. counters, returned as
        `.state` on resume); flushed and fsynced before returning. Writes only this batch."""
        records = list(records)
        entry = {"records": records} if state is None else {"records": records, "state": state}
        data = b""
        if not self._has_header:
            data = (json.dumps({"fingerprint": self.fingerprint}, ensure_ascii=False) + "\n").encode("utf-8")
        data += (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        self._file.seek(0, os.SEEK_END)
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._has_header = True
        self.bytes_written += len(data)
        self._records.extend(records)
        if state is not None:
            self.state = state

    def finalize(self, records=None, metadata=None):
        """Write the output atomically (format by its name), then its sidecar (`metadata` plus
        "fingerprint"), then delete the journal. records: default `self.records`. Returns the path."""
        recs = self._records if records is None else list(records)
        self.bytes_written += save_records(recs, self.output_path)
        if metadata is not None:
            save_metadata(self.output_path, dict(metadata, fingerprint=self.fingerprint))
        if os.path.exists(self.journal_path):
            os.remove(self.journal_path)
        self.complete = True
        self.close(remove_empty=False)
        return self.output_path

    def close(self, remove_empty=True):
        """Release the journal (a journal this run left empty is removed). Idempotent."""
        if self._file is None:
            return
        try:
            # only the lock holder may remove it: an empty journal may be another run's, just opened
            if remove_empty and self._locked and os.path.exists(self.journal_path) \
                    and os.path.getsize(self.journal_path) == 0:
                os.remove(self.journal_path)
        finally:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# ---------------------------------------------------------------------------------------------
# Record accessors

def record_id(record, position):
    """A record's id; files without ids get their position, as the original paired them."""
    return str(record.get("id", position))


def prompt_id(record, position):
    """The prompt index of a record; files without it hold one sample per prompt, in order."""
    return record.get("prompt_id", position)


def continuation_of(record):
    """The continuation text. Uses the stored field; for original files, strips the prompt off
    `generated` (and, unlike the original, does not drop text when `generated` does not start
    with the prompt: it then returns `generated` whole)."""
    if "continuation" in record:
        return record["continuation"]
    generated, prompt = record.get("generated", ""), record.get("prompt", "")
    if generated.startswith(prompt):
        return generated[len(prompt):].strip()
    return generated.strip()


def reward_keys(records):
    """Names of the numeric (reward) keys present in the first record, in file order."""
    skip = {"id", "prompt_id", "sample_id", "chosen_index", "mc_ess"}
    return [k for k, v in records[0].items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)]


def reward_matrix(records, values, source="records"):
    """Stack the rewards of `values` into a float64 array of shape (k, n).

    Raises RecordsError naming a value absent from the records (listing the keys present) or
    the records holding non-finite or non-numeric rewards.
    """
    present = set().union(*(r.keys() for r in records[:1]))
    for value in values:
        missing = [i for i, r in enumerate(records) if value not in r]
        if missing:
            where = "any record" if len(missing) == len(records) else \
                f"{len(missing)} of {len(records)} records (first at position {missing[0]})"
            raise RecordsError(
                f"value {value!r} is missing from {where} of {source}. Reward keys present: "
                f"{reward_keys(records) or sorted(present)}. Add it first (python rewardProcessor.py "
                f"--file_path=... add_reward --value={value}) or choose values that are present.")
    matrix = np.empty((len(values), len(records)), dtype=np.float64)
    for i, value in enumerate(values):
        bad = []
        for j, r in enumerate(records):
            x = r[value]
            ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            matrix[i, j] = float(x) if ok else np.nan
            if not ok:
                bad.append(record_id(r, j))
        if bad:
            raise RecordsError(
                f"value {value!r} has {len(bad)} non-finite or non-numeric rewards in {source} "
                f"(record ids {bad[:10]}{' ...' if len(bad) > 10 else ''}). Re-score those records "
                "or drop them before solving.")
    return matrix


def prompt_groups(records):
    """Integer group index per record (records sharing a prompt share a group), shape (n,).
    Uses `prompt_id` when present, else the prompt text."""
    keys = [r["prompt_id"] if "prompt_id" in r else r.get("prompt", j) for j, r in enumerate(records)]
    index = {}
    return np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)

"""Hostile-input probe: hand-made broken files, output faults, kills and memory, via the CLI.

An outsider's second probe of issue 11. It writes new hand-made bad inputs (MRC headers,
STAR / CSV / TSV tables, ``.npz`` datasets, checkpoints, copick JSON, Dynamo tables,
IMOD models, crYOLO boxes, OME-Zarr folders, TIFFs), runs the ``cryoguard`` commands on
them in subprocesses and the Python readers in a child process, and checks the rule:

* a failure is exit status 2 with one last stderr line ``cryoguard <cmd>: error: ...``
  and no traceback anywhere (API: only ``CryoGuardError``);
* an accepted input exits 0 only where the case allows it (``expect="either"``/``"ok"``);
* the peak RSS stays within a small multiple of what the file holds (against the
  command's baseline on a valid input);
* no code-carrying pickle ever runs (a marker file must never appear);
* output faults (directory, missing parent, read-only tmpfs, full tmpfs) end in the same
  one line, leave no ``.tmp`` and leave an older output intact;
* SIGKILL / SIGTERM of ``cryoguard train`` at random moments, then ``--resume`` (without
  ``--data``), ends with the weights of an uninterrupted run, no temporary file, the
  optimizer state beside the checkpoint and no NaN in the history;
* classify and FGSM on 1,000 and 5,000 subtomograms (28^3) at two batch sizes hold a
  peak RSS that does not grow with N.

Run (as root for the tmpfs cases; the rest runs as any user)::

    .venv/bin/python benchmarks/probe_hostile.py [--sections mrc,star,...] [--work DIR]

Sections: mrc star csv npz ckpt formats faults kills memory (default: all but memory;
``--sections all`` adds it). Prints one line per failing case and a summary with counts;
``--json FILE`` writes every record.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
CLI = str(BIN / "cryoguard") if (BIN / "cryoguard").exists() else "cryoguard"
PY = str(BIN / "python") if (BIN / "python").exists() else sys.executable
AS_LIMIT = 10 * 1024**3  # address-space cap of every child, so a bomb cannot take the host
RECORDS: list[dict] = []
MARKER = Path("/tmp/cryoguard_probe_PWNED")


# --------------------------------------------------------------------------- running


def _limited(argv: list[str]) -> list[str]:
    prlimit = shutil.which("prlimit")
    return [prlimit, f"--as={AS_LIMIT}", "--", *argv] if prlimit else list(argv)


def spawn(argv: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, str, float, float]:
    """Run ``argv``; (rc, stdout, stderr, seconds, peak RSS in MB of that child)."""
    t0 = time.perf_counter()
    # prlimit instead of a preexec_fn: subprocess then uses vfork, so the child's peak RSS
    # is its own (after a fork it would start with this process's resident size)
    proc = subprocess.Popen(_limited(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", env=env)
    out: dict[str, str] = {}

    def drain(name, stream):
        out[name] = stream.read()

    threads = [threading.Thread(target=drain, args=(n, s)) for n, s in
               (("out", proc.stdout), ("err", proc.stderr))]
    for t in threads:
        t.start()
    timer = threading.Timer(timeout, lambda: proc.kill())
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    for t in threads:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (proc.returncode, out.get("out", ""), out.get("err", ""),
            time.perf_counter() - t0, usage.ru_maxrss / 1024)


def verdict_of(rc: int, stderr: str) -> tuple[str, str]:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if "Traceback (most recent call last)" in stderr:
        return "TRACEBACK", last
    if rc == 2 and last.startswith("cryoguard") and ": error: " in last:
        return "ERROR", last
    if rc == 0:
        return "OK", last
    if rc in (-9, 137):
        return "KILLED", last
    return f"EXIT{rc}", last


BASE_RSS: dict[str, float] = {}


def cli(section: str, case: str, argv: list[str], expect: str = "error", *, timeout: float = 240,
        file_mb: float = 0.0, check=None) -> dict:
    """One CLI run, judged: ``expect`` is error / ok / either; ``check(rec)`` may add a problem."""
    expect = expect.split("/")[0]  # "cli/api" expectations: the CLI's part
    rc, out, err, secs, rss = spawn([CLI, *argv], timeout)
    verdict, last = verdict_of(rc, err)
    rec = dict(section=section, case=case, cmd=argv[0], argv=argv, rc=rc, verdict=verdict,
               last=last[:300], seconds=round(secs, 2), rss_mb=round(rss, 1), problems=[])
    if verdict == "TRACEBACK":
        rec["problems"].append("traceback")
        rec["tail"] = err[-1500:]
    elif verdict not in ("ERROR", "OK"):
        rec["problems"].append(f"bad exit {verdict}")
        rec["tail"] = err[-800:]
    elif expect == "error" and verdict == "OK":
        rec["problems"].append("exit 0 on an input that must be refused")
    elif expect == "ok" and verdict == "ERROR":
        rec["problems"].append("refused a valid input")
    if verdict == "ERROR":
        # the message must be one line: no other line after the first error line
        lines = [ln for ln in err.splitlines() if ln.strip()]
        first = next(i for i, ln in enumerate(lines) if ": error: " in ln)
        if first != len(lines) - 1:
            rec["problems"].append("error message spans several lines")
    base = BASE_RSS.get(argv[0])
    if base and rss > 1.5 * base + 3 * file_mb + 300:
        rec["problems"].append(f"peak RSS {rss:.0f} MB vs baseline {base:.0f} MB (file {file_mb:.1f} MB)")
    if secs > timeout * 0.95:
        rec["problems"].append("timed out")
    if MARKER.exists():
        rec["problems"].append("PICKLE CODE RAN (marker file exists)")
        MARKER.unlink()
    if check is not None:
        extra = check(rec)
        if extra:
            rec["problems"].append(extra)
    RECORDS.append(rec)
    if rec["problems"]:
        print(f"  FAIL [{section}] {case} ({argv[0]}): {'; '.join(rec['problems'])} :: {rec['last'][:160]}",
              flush=True)
    return rec


API_WORKER = r'''
import json, sys, traceback, warnings
warnings.simplefilter("ignore")
from napari_cryoguard.errors import CryoGuardError
kind = sys.argv[1]
def run(path):
    if kind == "tomogram":
        from napari_cryoguard.io import read_tomogram
        t = read_tomogram(path)
        import numpy as np
        d = t.data
        s = np.asarray(d[tuple(slice(0, 2) for _ in range(d.ndim))])
        return f"shape={tuple(d.shape)} vs={getattr(t, 'voxel_size', None)} slice_finite={bool(np.isfinite(s).all())}"
    if kind == "picks":
        from napari_cryoguard.io.readers import read_picks
        p = read_picks(path)
        return f"n={len(p.coords)} classes={None if p.class_names is None else len(p.class_names)} first_names={None if p.class_names is None else list(p.class_names)[:3]}"
    if kind == "dataset":
        from napari_cryoguard.data import load_dataset
        d = load_dataset(path, mmap=True)
        return f"n={len(d.volumes)} shape={d.volumes.shape} dtype={d.volumes.dtype}"
    if kind == "checkpoint":
        from napari_cryoguard.models.checkpoint import load_checkpoint
        m, meta = load_checkpoint(path)
        return f"arch={meta.get('arch')} classes={meta.get('num_classes')} names={len(meta.get('class_names') or [])}"
    raise SystemExit("unknown kind")
for path in sys.argv[2:]:
    try:
        res = {"path": path, "verdict": "OK", "detail": run(path)}
    except CryoGuardError as err:
        res = {"path": path, "verdict": "ERROR", "detail": str(err)[:200], "lines": str(err).count("\n") + 1}
    except BaseException as err:
        res = {"path": path, "verdict": "CRASH", "detail": f"{type(err).__name__}: {str(err)[:200]}",
               "tb": traceback.format_exc()[-600:]}
    print("@@" + json.dumps(res), flush=True)
'''


def api(section: str, kind: str, cases: list[tuple[str, Path, str]]) -> None:
    """The Python readers on every case file, in one child process (CryoGuardError only)."""
    if not cases:
        return
    rc, out, err, secs, rss = spawn([PY, "-c", API_WORKER, kind, *[str(p) for _, p, _ in cases]], 600)
    got = {}
    for line in out.splitlines():
        if line.startswith("@@"):
            r = json.loads(line[2:])
            got[r["path"]] = r
    for case, path, expect in cases:
        expect = expect.split("/")[-1]  # "cli/api" expectations: the API's part
        r = got.get(str(path))
        rec = dict(section=section, case=case, cmd=f"api:{kind}", rc=None, problems=[])
        if r is None:
            rec.update(verdict="LOST", last=err[-300:])
            rec["problems"].append("worker died before this case (memory? crash?)")
        else:
            rec.update(verdict=r["verdict"], last=r["detail"])
            if r["verdict"] == "CRASH":
                rec["problems"].append("non-CryoGuardError exception")
                rec["tail"] = r.get("tb")
            elif r["verdict"] == "OK" and expect == "error":
                rec["problems"].append("accepted an input that must be refused")
            elif r["verdict"] == "ERROR" and expect == "ok":
                rec["problems"].append("refused a valid input")
            elif r["verdict"] == "ERROR" and r.get("lines", 1) > 1:
                rec["problems"].append("error message spans several lines")
        if MARKER.exists():
            rec["problems"].append("PICKLE CODE RAN (marker file exists)")
            MARKER.unlink()
        RECORDS.append(rec)
        if rec["problems"]:
            print(f"  FAIL [{section}] {case} (api:{kind}): {'; '.join(rec['problems'])} :: {str(rec['last'])[:160]}",
                  flush=True)
    # one RSS figure for the whole worker
    RECORDS.append(dict(section=section, case=f"api worker {kind}", cmd="api-worker", verdict="INFO",
                        rss_mb=round(rss, 1), seconds=round(secs, 1), problems=[]))


def mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return path.stat().st_size / 1e6 if path.exists() else 0.0


# --------------------------------------------------------------------------- fixtures


class Fixtures:
    def __init__(self, work: Path):
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.tomo = work / "t.mrc"
        self.truth = work / "t_truth.star"
        self.ds = work / "ds.npz"
        self.ck = work / "ck.safetensors"
        if not self.tomo.exists():
            subprocess.run([CLI, "simulate", "--out", str(self.tomo), "--shape", "32", "64", "64",
                            "--particles", "5", "--quiet"], check=True)
        if not self.ds.exists():
            subprocess.run([CLI, "simulate-dataset", "--out", str(self.ds), "--per-class", "4",
                            "--quiet"], check=True)
        if not self.ck.exists():
            subprocess.run([CLI, "train", "--data", str(self.ds), "--tiny", "--epochs", "1",
                            "--batch-size", "8", "--out", str(self.ck), "--device", "cpu",
                            "--quiet"], check=True)
        self.out = work / "out"
        self.out.mkdir(exist_ok=True)


def baselines(fx: Fixtures) -> None:
    o = fx.out
    for name, argv in [
        ("pick", ["pick", str(fx.tomo), "--out", str(o / "b.star")]),
        ("extract", ["extract", "--picks", str(fx.truth), str(fx.tomo), "--out", str(o / "b.npz")]),
        ("classify", ["classify", str(fx.ds), "--model", str(fx.ck), "--out", str(o / "b.csv"),
                      "--device", "cpu"]),
        ("attack", ["attack", str(fx.ds), "--model", str(fx.ck), "--attack", "fgsm", "--out",
                    str(o / "ba.npz"), "--device", "cpu"]),
    ]:
        rec = cli("baseline", name, argv, expect="ok")
        BASE_RSS[name] = rec["rss_mb"]
    # train: a quick run, for its RSS
    rec = cli("baseline", "train", ["train", "--data", str(fx.ds), "--tiny", "--epochs", "1",
                                     "--batch-size", "8", "--out", str(o / "bt.safetensors"),
                                     "--device", "cpu", "--quiet"], expect="ok")
    BASE_RSS["train"] = rec["rss_mb"]


# --------------------------------------------------------------------------- MRC

_MRC_FIELDS = {
    "nx": (0, "i"), "ny": (4, "i"), "nz": (8, "i"), "mode": (12, "i"), "nxstart": (16, "i"),
    "nystart": (20, "i"), "nzstart": (24, "i"), "mx": (28, "i"), "my": (32, "i"), "mz": (36, "i"),
    "cx": (40, "f"), "cy": (44, "f"), "cz": (48, "f"), "alpha": (52, "f"), "mapc": (64, "i"),
    "mapr": (68, "i"), "maps": (72, "i"), "dmin": (76, "f"), "dmax": (80, "f"), "dmean": (84, "f"),
    "ispg": (88, "i"), "nsymbt": (92, "i"), "exttyp": (104, "4s"), "nversion": (108, "i"),
    "ox": (196, "f"), "oy": (200, "f"), "oz": (204, "f"), "map": (208, "4s"),
    "machst": (212, "4s"), "rms": (216, "f"), "nlabl": (220, "i"),
}


def mrc_patch(raw: bytes, **fields) -> bytes:
    b = bytearray(raw)
    for k, v in fields.items():
        off, fmt = _MRC_FIELDS[k]
        struct.pack_into("<" + fmt, b, off, v)
    return bytes(b)


def mrc_cases(fx: Fixtures) -> list[tuple[str, bytes, str]]:
    raw = fx.tomo.read_bytes()
    nsym = struct.unpack_from("<i", raw, 92)[0]
    head, data = raw[:1024 + nsym], raw[1024 + nsym:]
    nan_data = bytearray(data)
    struct.pack_into("<f", nan_data, 100, float("nan"))
    struct.pack_into("<f", nan_data, 4000, float("inf"))
    ext = mrc_patch(head[:1024], nsymbt=1024, exttyp=b"FEI1") + b"\0" * 1024 + data
    rnd = random.Random(11)
    return [
        ("valid", raw, "ok"),
        ("mode_99", mrc_patch(raw, mode=99), "error"),
        ("mode_3_complex_int16", mrc_patch(raw, mode=3), "either"),
        ("mode_4_complex64", mrc_patch(raw, mode=4, nx=32), "either"),
        ("mode_101_4bit", mrc_patch(raw, mode=101), "either"),
        ("mode_12_float16", mrc_patch(raw, mode=12, nx=128), "either"),
        ("mode_1_size_mismatch", mrc_patch(raw, mode=1), "either"),
        ("mode_neg", mrc_patch(raw, mode=-1), "error"),
        ("nx_negative", mrc_patch(raw, nx=-64), "error"),
        ("nx_zero", mrc_patch(raw, nx=0), "error"),
        ("nz_huge", mrc_patch(raw, nz=2**31 - 1), "error"),
        ("dims_overflow", mrc_patch(raw, nx=2**20, ny=2**20, nz=2**20), "error"),
        ("truncated_half", raw[: 1024 + len(data) // 2], "error"),
        ("truncated_1byte", raw[:-1], "error"),
        ("header_only_500", raw[:500], "error"),
        ("header_only_1024", raw[:1024], "error"),
        ("trailing_junk", raw + b"\x7f" * 4096, "either"),
        ("nsymbt_huge", mrc_patch(raw, nsymbt=2**30), "error"),
        ("nsymbt_negative", mrc_patch(raw, nsymbt=-4), "error"),
        ("nsymbt_lies_1024", mrc_patch(raw, nsymbt=1024), "error"),
        ("nsymbt_real_fei", ext, "ok"),
        ("mapcrs_312", mrc_patch(raw, mapc=3, mapr=1, maps=2), "either"),
        ("mapcrs_213", mrc_patch(raw, mapc=2, mapr=1, maps=3), "either"),
        ("mapcrs_000", mrc_patch(raw, mapc=0, mapr=0, maps=0), "either"),  # old files: 0 = default
        ("mapcrs_112", mrc_patch(raw, mapc=1, mapr=1, maps=2), "error"),
        ("mapcrs_456", mrc_patch(raw, mapc=4, mapr=5, maps=6), "error"),
        ("mapcrs_neg", mrc_patch(raw, mapc=-1, mapr=2, maps=3), "error"),
        ("nxstart_max", mrc_patch(raw, nxstart=2**31 - 1, nystart=-2**31), "either"),
        ("origin_nan", mrc_patch(raw, ox=float("nan"), oy=float("inf")), "either"),
        ("cell_zero", mrc_patch(raw, cx=0.0, cy=0.0, cz=0.0), "either"),
        ("cell_negative", mrc_patch(raw, cx=-640.0), "either"),
        ("cell_nan", mrc_patch(raw, cx=float("nan"), cy=float("inf")), "either"),
        ("mxyz_zero", mrc_patch(raw, mx=0, my=0, mz=0), "either"),
        ("mxyz_negative", mrc_patch(raw, mx=-64), "either"),
        ("map_word_bad", mrc_patch(raw, map=b"XXXX"), "either"),
        ("machst_big_endian", mrc_patch(raw, machst=b"\x11\x11\x00\x00"), "either"),
        ("dmin_nan", mrc_patch(raw, dmin=float("nan"), dmax=float("-inf"), rms=float("nan")), "either"),
        ("data_nan_inf", head + bytes(nan_data), "either"),
        ("ispg_401_odd_mz", mrc_patch(raw, ispg=401, mz=5), "either"),
        ("nlabl_huge", mrc_patch(raw, nlabl=10**6), "either"),
        ("zeros_1024", b"\0" * 1024, "error"),
        ("empty", b"", "error"),
        ("garbage", bytes(rnd.getrandbits(8) for _ in range(5000)), "error"),
        ("two_d_nz1", mrc_patch(raw[: 1024 + nsym + 64 * 64 * 4], nz=1), "either"),
        ("text_file", b"this is not a map\n" * 100, "error"),
    ]


def section_mrc(fx: Fixtures) -> None:
    d = fx.work / "mrc"
    d.mkdir(exist_ok=True)
    api_cases = []
    for case, data, expect in mrc_cases(fx):
        p = d / f"{case}.mrc"
        p.write_bytes(data)
        api_cases.append((case, p, expect))
        cli("mrc", case, ["pick", str(p), "--out", str(fx.out / "mrc.star")], expect, file_mb=mb(p))
        cli("mrc", case, ["extract", "--picks", str(fx.truth), str(p), "--out", str(fx.out / "mrc.npz")],
            "either" if expect == "ok" else expect, file_mb=mb(p))
    dirmrc = d / "adir.mrc"
    dirmrc.mkdir(exist_ok=True)
    cli("mrc", "directory_named_mrc", ["pick", str(dirmrc), "--out", str(fx.out / "mrc.star")])
    cli("mrc", "missing_file", ["pick", str(d / "nope.mrc"), "--out", str(fx.out / "mrc.star")])
    api("mrc", "tomogram", api_cases + [("directory_named_mrc", dirmrc, "error")])


# --------------------------------------------------------------------------- STAR / CSV

_STAR_OK = "data_particles\n\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n32 32 16\n20 40 10\n"


def star_cases() -> list[tuple[str, bytes, str]]:
    big_classes = ("data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n"
                   "_rlnClassNumber\n_cryoguardClassName\n1 2 3 30000000 x\n")
    feat_wide = ("data_cryoguard_features\nloop_\n_cryoguardFeatureName\n_cryoguardFeatureDtype\n"
                 "_cryoguardFeatureWidth\nf float64 100000000\n\n" + _STAR_OK.replace(
                     "_rlnCoordinateZ\n", "_rlnCoordinateZ\n_f[0]\n").replace("16\n", "16 1\n").replace(
                     "10\n", "10 2\n"))
    feat_dtype = feat_wide.replace("float64 100000000", "garbage 0").replace("_f[0]", "_f")
    feat_obj = feat_wide.replace("float64 100000000", "object 0").replace("_f[0]", "_f")
    opt = ("data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n1 10.0\n\n"
           "data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n_rlnOpticsGroup\n"
           "32 32 16 1\n20 40 10 1\n")
    return [
        ("valid", _STAR_OK.encode(), "ok"),
        ("loop_without_data", _STAR_OK.replace("data_particles\n", "").encode(), "either"),
        ("key_value_block", b"data_\n_rlnCoordinateX 3\n_rlnCoordinateY 4\n_rlnCoordinateZ 5\n", "either"),
        ("optics_and_particles", opt.encode(), "ok"),
        ("optics_group_missing", opt.replace(" 1\n20", " 9\n20").encode(), "either"),
        ("optics_pixel_zero", opt.replace("1 10.0", "1 0.0").encode(), "either"),
        ("optics_pixel_text", opt.replace("1 10.0", "1 abc").encode(), "error"),
        ("two_particle_blocks", (_STAR_OK + "\n" + _STAR_OK).encode(), "either"),
        ("missing_z", b"data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n1 2\n3 4\n", "either"),
        ("no_coordinates", b"data_\nloop_\n_rlnAngleRot\n_rlnAngleTilt\n1 2\n3 4\n", "error"),
        ("non_numeric_coord", _STAR_OK.replace("32 32 16", "abc 32 16").encode(), "error"),
        ("nan_coord", _STAR_OK.replace("32 32 16", "nan 32 16").encode(), "error"),
        ("inf_coord", _STAR_OK.replace("32 32 16", "32 inf 16").encode(), "error"),
        ("overflow_coord", _STAR_OK.replace("32 32 16", "1e400 32 16").encode(), "error"),
        ("huge_coord", _STAR_OK.replace("32 32 16", "1e300 32 16").encode(), "either"),
        ("class_30M_names", big_classes.encode(), "either"),
        ("class_30M", big_classes.replace("_cryoguardClassName\n", "").replace(" x\n", "\n").encode(), "either"),
        ("class_negative", big_classes.replace("30000000 x", "-5 x").encode(), "either"),
        ("class_fraction", big_classes.replace("30000000 x", "3.5 x").encode(), "either"),
        ("class_1e30", big_classes.replace("30000000 x", "1e30 x").encode(), "either"),
        ("class_text", big_classes.replace("30000000 x", "abc x").encode(), "either"),
        ("duplicate_columns", _STAR_OK.replace("_rlnCoordinateZ\n", "_rlnCoordinateZ\n_rlnCoordinateX\n")
         .replace("16\n", "16 1\n").replace("10\n", "10 2\n").encode(), "error"),
        ("duplicate_feature_columns", _STAR_OK.replace("_rlnCoordinateZ\n", "_rlnCoordinateZ\n_foo\n_foo\n")
         .replace("16\n", "16 1 2\n").replace("10\n", "10 2 3\n").encode(), "error"),
        ("feature_width_1e8", feat_wide.encode(), "error"),
        ("feature_dtype_garbage", feat_dtype.encode(), "error"),
        ("feature_dtype_object", feat_obj.encode(), "error"),
        ("bom", b"\xef\xbb\xbf" + _STAR_OK.encode(), "ok"),
        ("crlf", _STAR_OK.replace("\n", "\r\n").encode(), "ok"),
        ("cr_only", _STAR_OK.replace("\n", "\r").encode(), "either"),
        ("comment_lines", ("# made by hand\n" + _STAR_OK.replace("loop_\n", "loop_\n# a comment\n")
                           + "# trailing\n").encode(), "ok"),
        ("empty", b"", "error"),
        ("whitespace_only", b"   \n\n\t\n", "error"),
        ("data_only", b"data_\n", "error"),
        ("loop_no_columns", b"data_\nloop_\n", "error"),
        ("loop_no_rows", b"data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n", "either"),
        ("ragged_row_short", _STAR_OK.replace("20 40 10", "20 40").encode(), "error"),
        ("ragged_row_long", _STAR_OK.replace("20 40 10", "20 40 10 7").encode(), "error"),
        ("unterminated_quote", _STAR_OK.replace("20 40 10", "20 40 '10").encode(), "error"),
        ("column_index_lies", _STAR_OK.replace("_rlnCoordinateX", "_rlnCoordinateX #7").encode(), "either"),
        ("latin1_bytes", (_STAR_OK.replace("_rlnCoordinateZ\n", "_rlnCoordinateZ\n_rlnTomoName\n")
                          .replace("16\n", "16 t\xe9\n").replace("10\n", "10 t\n")).encode("latin-1"), "either"),
        ("unicode_tomo", (_STAR_OK.replace("_rlnCoordinateZ\n", "_rlnCoordinateZ\n_rlnTomoName\n")
                          .replace("16\n", "16 t\n").replace("10\n", "10 тomo名\n")).encode(), "either"),
        ("binary_garbage", bytes(random.Random(3).getrandbits(8) for _ in range(3000)), "error"),
        ("nul_bytes", _STAR_OK.replace("20 40 10", "20 \0 10").encode(), "error"),
        ("long_token_4MB", (_STAR_OK + "data_x\n_rlnFoo " + "A" * 4_000_000 + "\n").encode(), "either"),
        ("deep_block_names", ("".join(f"data_b{i}\n" for i in range(20000)) + _STAR_OK).encode(), "either"),
        ("voxel_size_negative", ("data_cryoguard\n_cryoguardVoxelSize -3\n\n" + _STAR_OK).encode(), "error"),
        ("voxel_size_text", ("data_cryoguard\n_cryoguardVoxelSize abc\n\n" + _STAR_OK).encode(), "error"),
        ("format_version_99", ("data_cryoguard\n_cryoguardFormatVersion 99\n\n" + _STAR_OK).encode(), "either"),
        ("centered_angst_no_tomos", b"data_particles\nloop_\n_rlnCenteredCoordinateXAngst\n"
         b"_rlnCenteredCoordinateYAngst\n_rlnCenteredCoordinateZAngst\n_rlnTomoName\n1 2 3 t\n", "either/error"),
        ("origin_text", _STAR_OK.replace("_rlnCoordinateZ\n", "_rlnCoordinateZ\n_rlnOriginXAngst\n")
         .replace("16\n", "16 abc\n").replace("10\n", "10 1\n").encode(), "either"),
    ]


def csv_cases() -> list[tuple[str, str, bytes, str]]:
    ok = "x,y,z\n32,32,16\n20,40,10\n"
    return [
        ("valid", ".csv", ok.encode(), "ok"),
        ("tsv", ".tsv", ok.replace(",", "\t").encode(), "either"),
        ("ragged_short", ".csv", (ok + "1,2\n").encode(), "error"),
        ("ragged_long", ".csv", (ok + "1,2,3,4\n").encode(), "error"),
        ("header_only", ".csv", b"x,y,z\n", "either"),
        ("unicode_header", ".csv", "x,y,z,名前\n32,32,16,a\n20,40,10,b\n".encode(), "ok"),
        ("unicode_values", ".csv", "x,y,z,tomo_name\n32,32,16,t\n20,40,10,тomo名\n".encode(), "either"),
        ("duplicate_columns", ".csv", b"x,y,z,x\n32,32,16,1\n20,40,10,2\n", "error"),
        ("two_names_one_axis", ".csv", b"x,y,z,coord_x\n32,32,16,1\n20,40,10,2\n", "error"),
        ("semicolon", ".csv", ok.replace(",", ";").encode(), "either"),
        ("quoted_newline", ".csv", b'x,y,z,note\n32,32,16,"a\nb"\n20,40,10,c\n', "either"),
        ("bom", ".csv", b"\xef\xbb\xbf" + ok.encode(), "ok"),
        ("crlf", ".csv", ok.replace("\n", "\r\n").encode(), "ok"),
        ("nan", ".csv", ok.replace("32,32,16", "nan,32,16").encode(), "error"),
        ("empty_cell", ".csv", ok.replace("32,32,16", ",32,16").encode(), "error"),
        ("overflow", ".csv", ok.replace("32,32,16", "1e400,32,16").encode(), "error"),
        ("class_names_string", ".csv", (b'# class_names: "abc"\nx,y,z,label\n32,32,16,0\n20,40,10,1\n'),
         "error"),
        ("class_names_huge_label", ".csv", b"x,y,z,label\n32,32,16,0\n20,40,10,30000000\n", "either"),
        ("features_width_lies", ".csv", (b'# features: {"f": ["float64", 100000000]}\nx,y,z,f[0]\n'
                                         b'32,32,16,1\n20,40,10,2\n'), "error"),
        ("features_dtype_garbage", ".csv", (b'# features: {"f": ["garbage", 0]}\nx,y,z,f\n32,32,16,1\n'
                                            b'20,40,10,2\n'), "error"),
        ("features_meta_not_json", ".csv", b"# features: {oops\nx,y,z\n32,32,16\n", "error"),
        ("voxel_size_meta_bad", ".csv", b"# voxel_size: -1\nx,y,z\n32,32,16\n", "error"),
        ("empty", ".csv", b"", "error"),
        ("blank_lines", ".csv", b"\n\n\n", "error"),
        ("one_column", ".csv", b"x\n1\n2\n", "error"),
        ("no_header_numbers", ".csv", b"32,32,16\n20,40,10\n", "ok"),
        ("mixed_delims", ".csv", b"x,y\tz\n32,32\t16\n", "either"),
        ("label_text", ".csv", b"x,y,z,label\n32,32,16,abc\n", "error"),
        ("label_fraction", ".csv", b"x,y,z,label\n32,32,16,0.5\n", "error"),
        ("napari_axes", ".csv", b"index,axis-0,axis-1,axis-2\n0,16,32,32\n", "ok"),
        ("binary", ".csv", bytes(range(256)) * 8, "error"),
        ("coords_file", ".coords", b"32 32 16\n20 40 10\n", "ok"),
        ("coords_ragged", ".coords", b"32 32 16\n20 40\n", "error"),
    ]


def section_tables(fx: Fixtures, which: str) -> None:
    d = fx.work / which
    d.mkdir(exist_ok=True)
    api_cases = []
    items = ([(c, ".star", b, e) for c, b, e in star_cases()] if which == "star" else csv_cases())
    for case, suffix, data, expect in items:
        p = d / f"{case}{suffix}"
        p.write_bytes(data)
        api_cases.append((case, p, expect))
        cli(which, case, ["extract", "--picks", str(p), str(fx.tomo), "--out", str(fx.out / f"{which}.npz"),
                          "--size", "16", "--border", "pad"],
            expect, file_mb=mb(p), timeout=120)
    api(which, "picks", api_cases)
    if which == "star":
        # what the package writes reads back: odd feature names and the string "NaN"
        roundtrip(fx)


ROUNDTRIP = r'''
import json, sys, warnings
import numpy as np
warnings.simplefilter("ignore")
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.io import Picks, write_picks, read_picks
out = sys.argv[1]
names = ["_x", "data_y", "loop_", "a b", "stop_z", "global_", "#h", "ok", "save_1", "x'y", "[0]", "é", ""]
res = {"written": 0, "refused": 0, "mismatch": [], "crash": []}
for suffix in (".star", ".csv"):
    for name in names:
        for value in (np.array(["NaN", "nan"]), np.array([1.5, np.nan])):
            p = Picks(coords=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), features={name: value},
                      voxel_size=10.0)
            path = f"{out}/rt{suffix}"
            try:
                write_picks(path, p)
            except CryoGuardError:
                res["refused"] += 1
                continue
            except Exception as e:
                res["crash"].append(f"write {suffix} {name!r}: {type(e).__name__}: {e}"[:200])
                continue
            res["written"] += 1
            try:
                q = read_picks(path)
                got = q.features.get(name) if q.features else None
                if got is None or got.dtype.kind != value.dtype.kind or not (
                        np.array_equal(got, value) if value.dtype.kind == "U" else
                        np.array_equal(got, value, equal_nan=True)):
                    res["mismatch"].append(f"{suffix} {name!r}: wrote {value.tolist()} got "
                                           f"{None if got is None else got.tolist()}")
            except CryoGuardError as e:
                res["mismatch"].append(f"{suffix} {name!r}: written but unreadable: {e}"[:200])
            except Exception as e:
                res["crash"].append(f"read {suffix} {name!r}: {type(e).__name__}: {e}"[:200])
print("@@" + json.dumps(res))
'''


def roundtrip(fx: Fixtures) -> None:
    rc, out, err, secs, rss = spawn([PY, "-c", ROUNDTRIP, str(fx.out)], 300)
    line = next((ln for ln in out.splitlines() if ln.startswith("@@")), None)
    rec = dict(section="star", case="write_read_roundtrip", cmd="api:write_picks", problems=[])
    if line is None:
        rec.update(verdict="CRASH", last=err[-300:])
        rec["problems"].append("roundtrip worker died")
    else:
        r = json.loads(line[2:])
        rec.update(verdict="INFO", last=f"written {r['written']} refused {r['refused']}")
        for m in r["mismatch"]:
            rec["problems"].append("roundtrip: " + m)
        for c in r["crash"]:
            rec["problems"].append("roundtrip crash: " + c)
    RECORDS.append(rec)
    for p in rec["problems"]:
        print(f"  FAIL [star] write_read_roundtrip: {p}", flush=True)


# --------------------------------------------------------------------------- .npz datasets


def npy_bytes(arr: np.ndarray, header: dict | None = None, raw_header: bytes | None = None) -> bytes:
    """An .npy member; ``header`` overrides fields (to lie), ``raw_header`` replaces it."""
    if raw_header is None:
        h = {"descr": np.lib.format.dtype_to_descr(arr.dtype), "fortran_order": False,
             "shape": arr.shape}
        if header:
            h.update(header)
        raw_header = repr(h).encode("latin1")
    pad = 64 - (10 + len(raw_header) + 1) % 64
    raw_header = raw_header + b" " * pad + b"\n"
    body = b"" if arr.dtype.hasobject else arr.tobytes()
    if arr.dtype.hasobject:
        body = pickle.dumps(arr, protocol=2)
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw_header)) + raw_header + body


def write_npz(path: Path, members: dict[str, bytes], compress: bool = False) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name if name.endswith(".npy") else name + ".npy", data)


def meta_of(fx: Fixtures) -> str:
    with np.load(fx.ds) as z:
        return str(z["metadata"])


def write_bomb(path: Path, metadata: str, n: int = 20000) -> None:
    """A compressed .npz of ~2 MB whose volumes member inflates to n x 28^3 float32 zeros."""
    vol_header = npy_bytes(np.zeros((0, 28, 28, 28), np.float32), {"shape": (n, 28, 28, 28)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("format_version.npy", npy_bytes(np.asarray(1)))
        z.writestr("metadata.npy", npy_bytes(np.array(metadata)))
        z.writestr("labels.npy", npy_bytes(np.zeros(n, np.int64)))
        with z.open("volumes.npy", "w", force_zip64=True) as fh:
            fh.write(vol_header)
            block = bytes(28**3 * 4 * 100)
            for _ in range(n // 100):
                fh.write(block)


class _Pwn:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def npz_cases(fx: Fixtures) -> list[tuple[str, dict | bytes, str, bool]]:
    """(case, members or raw bytes, expect, compress)."""
    z = np.load(fx.ds)
    vol, lab, meta, ver = z["volumes"], z["labels"], json.loads(str(z["metadata"])), z["format_version"]

    def m(volumes=vol, labels=lab, metadata=meta, version=ver, **extra):
        d = {"format_version": npy_bytes(np.asarray(version)), "volumes": npy_bytes(np.asarray(volumes))}
        if labels is not None:
            d["labels"] = npy_bytes(np.asarray(labels))
        if metadata is not None:
            text = metadata if isinstance(metadata, str) else json.dumps(metadata)
            d["metadata"] = npy_bytes(np.array(text))
        for k, v in extra.items():
            d[k] = v
        return d

    nan = vol.copy()
    nan[3, 1, 2, 3] = np.nan
    nan[7, 0, 0, 0] = np.nan
    inf = vol.copy()
    inf[5, 4, 4, 4] = np.inf
    objv = np.empty(len(vol), dtype=object)
    objv[0] = _Pwn()
    good = fx.ds.read_bytes()
    return [
        ("valid", m(), "ok", False),
        ("compressed", m(), "either", True),
        ("compressed_bomb_1.7GB", "bomb", "either", True),
        ("object_volumes_pickle", m(volumes=objv), "error", False),
        ("object_metadata_pickle", {**m(), "metadata": npy_bytes(np.array([_Pwn()], dtype=object))},
         "error", False),
        ("volumes_float64", m(volumes=vol.astype(np.float64)), "either", False),
        ("volumes_float16", m(volumes=vol.astype(np.float16)), "either", False),
        ("volumes_int16", m(volumes=(vol * 100).astype(np.int16)), "either", False),
        ("volumes_complex", m(volumes=vol.astype(np.complex64)), "error", False),
        ("volumes_bool", m(volumes=vol > 0), "either", False),
        ("volumes_strings", m(volumes=np.array([["a"] * 3] * 20)), "error", False),
        ("volumes_3d", m(volumes=vol[:, 0]), "error", False),
        ("volumes_5d", m(volumes=vol[:, None]), "error", False),
        ("volumes_non_cubic", m(volumes=vol[:, :, :, :20]), "either", False),
        ("volumes_cube_2", m(volumes=vol[:, :2, :2, :2]), "error/either", False),
        ("volumes_empty", m(volumes=vol[:0], labels=lab[:0]), "error/either", False),
        ("volumes_scalar", m(volumes=np.float32(1)), "error", False),
        ("labels_short", m(labels=lab[:10]), "error", False),
        ("labels_2d", m(labels=lab[:, None]), "error", False),
        ("labels_float", m(labels=lab + 0.5), "error", False),
        ("labels_negative", m(labels=lab - 3), "error", False),
        ("labels_out_of_range", m(labels=lab + 10), "error", False),
        ("labels_huge", m(labels=lab + 2**40), "error", False),
        ("labels_strings", m(labels=lab.astype(str)), "error", False),
        ("labels_missing", m(labels=None), "either", False),
        ("nan_volumes", m(volumes=nan), "either", False),
        ("inf_volumes", m(volumes=inf), "either", False),
        ("header_shape_1e9", {**m(), "volumes": npy_bytes(vol, {"shape": (10**9, 28, 28, 28)})}, "error", False),
        ("header_shape_negative", {**m(), "volumes": npy_bytes(vol, {"shape": (-20, 28, 28, 28)})}, "error",
         False),
        ("header_shape_smaller", {**m(), "volumes": npy_bytes(vol, {"shape": (10, 28, 28, 28)})}, "either",
         False),
        ("header_dtype_f8_lie", {**m(), "volumes": npy_bytes(vol, {"descr": "<f8"})}, "error", False),
        ("header_dtype_garbage", {**m(), "volumes": npy_bytes(vol, {"descr": "zz9"})}, "error", False),
        ("header_fortran", {**m(), "volumes": npy_bytes(vol, {"fortran_order": True})}, "either", False),
        ("header_not_dict", {**m(), "volumes": npy_bytes(vol, raw_header=b"[1, 2, 3]")}, "error", False),
        ("header_code", {**m(), "volumes": npy_bytes(vol, raw_header=(
            b"{'descr': __import__('os').system('touch " + str(MARKER).encode() + b"'), "
            b"'fortran_order': False, 'shape': (20, 28, 28, 28)}"))}, "error", False),
        ("header_big_endian", {**m(), "volumes": npy_bytes(vol.astype(">f4"))}, "either", False),
        ("metadata_not_json", m(metadata="{oops"), "error", False),
        ("metadata_list", m(metadata=[1, 2]), "error", False),
        ("metadata_class_names_int", m(metadata={**meta, "class_names": 5}), "error", False),
        ("metadata_class_names_string", m(metadata={**meta, "class_names": "abcde"}), "error", False),
        ("metadata_class_names_short", m(metadata={**meta, "class_names": ["a", "b"]}), "error", False),
        ("metadata_class_names_ints", m(metadata={**meta, "class_names": [1, 2, 3, 4, 5]}), "either", False),
        ("metadata_voxel_negative", m(metadata={**meta, "voxel_size": -1}), "error", False),
        ("metadata_voxel_text", m(metadata={**meta, "voxel_size": "ten"}), "error", False),
        ("metadata_voxel_nan", m(metadata=json.dumps({**meta, "voxel_size": float("nan")})), "error", False),
        ("metadata_normalized_text", m(metadata={**meta, "normalized": "yes"}), "either", False),
        ("metadata_missing", m(metadata=None), "either", False),
        ("metadata_bytes_dtype", {**m(), "metadata": npy_bytes(np.array(b"{}"))}, "either", False),
        ("format_version_99", m(version=99), "error", False),
        ("format_version_text", m(version="1"), "error", False),
        ("format_version_missing", {k: v for k, v in m().items() if k != "format_version"}, "error", False),
        ("volumes_missing", {k: v for k, v in m().items() if k != "volumes"}, "error", False),
        ("path_traversal_member", {**m(), "../../evil": npy_bytes(np.zeros(3))}, "either", False),
        ("many_members", {**m(), **{f"junk{i}": npy_bytes(np.zeros(1)) for i in range(3000)}}, "either", False),
        ("zip_truncated", good[: len(good) // 2], "error", False),
        ("zip_tail_cut", good[:-30], "error", False),
        ("not_zip", b"hello" * 1000, "error", False),
        ("empty", b"", "error", False),
        ("single_npy", npy_bytes(vol), "error", False),
        ("pickle_file", pickle.dumps(_Pwn()), "error", False),
    ]


def section_npz(fx: Fixtures) -> None:
    d = fx.work / "npz"
    d.mkdir(exist_ok=True)
    api_cases = []
    train_cases = {"valid", "nan_volumes", "inf_volumes", "labels_out_of_range", "labels_missing",
                   "volumes_float64", "compressed_bomb_1.7GB", "labels_negative", "metadata_class_names_short",
                   "header_shape_1e9", "volumes_non_cubic", "header_fortran", "labels_short"}
    for case, members, expect, compress in npz_cases(fx):
        p = d / f"{case}.npz"
        if members == "bomb":
            write_bomb(p, meta_of(fx))
        elif isinstance(members, bytes):
            p.write_bytes(members)
        else:
            write_npz(p, members, compress)
        api_cases.append((case, p, expect))
        fm = mb(p)
        cli("npz", case, ["classify", str(p), "--model", str(fx.ck), "--out", str(fx.out / "npz.csv"),
                          "--device", "cpu"], expect, file_mb=fm, timeout=120)
        attack_expect = "error" if case in ("nan_volumes", "inf_volumes") else expect
        cli("npz", case, ["attack", str(p), "--model", str(fx.ck), "--attack", "fgsm",
                          "--out", str(fx.out / "npz_att.npz"), "--device", "cpu"], attack_expect,
            file_mb=fm, timeout=120)
        if case in train_cases:
            texp = "error" if case in ("nan_volumes", "inf_volumes", "labels_missing") else expect
            cli("npz", case, ["train", "--data", str(p), "--tiny", "--epochs", "1", "--batch-size", "8",
                              "--out", str(fx.out / "npz_train.safetensors"), "--device", "cpu", "--quiet"],
                texp, file_mb=fm, timeout=180)
    api("npz", "dataset", api_cases)


# --------------------------------------------------------------------------- checkpoints


def ckpt_cases(fx: Fixtures) -> list[tuple[str, str, bytes, str]]:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(fx.ck))
    with safe_open(str(fx.ck), "pt") as f:
        raw_meta = f.metadata()
    meta = json.loads(raw_meta["cryoguard"])

    def st(meta_obj=None, tensors_=None, raw: str | None = None, drop_key=False) -> bytes:
        tmp = fx.work / "_tmp_ck.safetensors"
        md = {k: v for k, v in raw_meta.items() if k != "cryoguard"}
        if not drop_key:
            md["cryoguard"] = raw if raw is not None else json.dumps(meta_obj)
        save_file(tensors_ if tensors_ is not None else tensors, str(tmp), metadata=md)
        data = tmp.read_bytes()
        tmp.unlink()
        return data

    def mm(**kv):
        d = json.loads(json.dumps(meta))
        for k, v in kv.items():
            if "." in k:
                a, b = k.split(".")
                d[a][b] = v
            else:
                d[k] = v
        return d

    def tens(fn):
        t = {k: v.clone() for k, v in tensors.items()}
        fn(t)
        return t

    first = sorted(tensors)[0]
    wkey = next(k for k in sorted(tensors) if k.endswith("weight"))
    good = fx.ck.read_bytes()
    hlen = struct.unpack("<Q", good[:8])[0]
    buf = io.BytesIO()
    torch.save({k: v for k, v in tensors.items()}, buf)
    legacy = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"state_dict": tensors, "evil": _Pwn()}, buf)
    evil_pt = buf.getvalue()
    evil_raw = pickle.dumps({"x": _Pwn()})
    s = ".safetensors"
    return [
        ("valid", s, good, "ok"),
        ("meta_string_5", s, st(raw='"5"'), "error"),
        ("meta_not_json", s, st(raw="{oops"), "error"),
        ("meta_list", s, st(raw="[1,2]"), "error"),
        ("meta_missing", s, st(drop_key=True), "error"),
        ("num_classes_text", s, st(mm(num_classes="five")), "error"),
        ("num_classes_zero", s, st(mm(num_classes=0)), "error"),
        ("num_classes_bool", s, st(mm(num_classes=True)), "error"),
        ("num_classes_float", s, st(mm(num_classes=5.5)), "error"),
        ("num_classes_1e9", s, st(mm(num_classes=10**9)), "error"),
        ("num_classes_mismatch_tensors", s, st(mm(num_classes=7, class_names=list("abcdefg"))), "error"),
        ("class_names_int", s, st(mm(class_names=5)), "error"),
        ("class_names_short", s, st(mm(class_names=["a", "b"])), "error"),
        ("class_names_long", s, st(mm(class_names=list("abcdefgh"))), "error"),
        ("class_names_ints", s, st(mm(class_names=[1, 2, 3, 4, 5])), "either"),
        ("class_names_null", s, st(mm(class_names=None)), "either"),
        ("class_names_dupes", s, st(mm(class_names=["a"] * 5)), "either"),
        ("cube_4096", s, st(mm(cube=4096)), "error"),
        ("cube_zero", s, st(mm(cube=0)), "error"),
        ("cube_text", s, st(mm(cube="28")), "error"),
        ("cube_20_mismatch", s, st(mm(cube=20)), "either"),
        ("fc_widths_1e6", s, st(mm(**{"arch_params.fc_widths": [10**6, 10**6]})), "error"),
        ("conv_widths_1e5", s, st(mm(**{"arch_params.conv_widths": [10**5] * 5})), "error"),
        ("conv_widths_negative", s, st(mm(**{"arch_params.conv_widths": [-1, 4, 8, 8, 8]})), "error"),
        ("conv_widths_text", s, st(mm(**{"arch_params.conv_widths": "wide"})), "error"),
        ("dropout_5", s, st(mm(**{"arch_params.dropout": 5})), "error"),
        ("arch_params_unknown_key", s, st(mm(**{"arch_params.bogus": 1})), "error"),
        ("arch_params_string", s, st(mm(arch_params="x")), "error"),
        ("arch_unknown", s, st(mm(arch="resnet9000")), "error"),
        ("arch_int", s, st(mm(arch=5)), "error"),
        ("normalization_bogus", s, st(mm(normalization="bogus")), "error"),
        ("voxel_size_negative", s, st(mm(voxel_size=-1)), "error"),
        ("voxel_size_text", s, st(mm(voxel_size="ten")), "error"),
        ("voxel_size_nan", s, st(raw=json.dumps(mm(voxel_size=float("nan"))), ), "error"),
        ("format_version_999", s, st(mm(format_version=999)), "error"),
        ("format_version_text", s, st(mm(format_version="1")), "error"),
        ("training_string", s, st(mm(training="x")), "either"),
        ("metrics_list", s, st(mm(metrics=[1])), "either"),
        ("history_garbage", s, st(mm(history="x")), "either"),
        ("nan_weights", s, st(meta, tens(lambda t: t[wkey].view(-1).__setitem__(0, float("nan")))), "error"),
        ("inf_bias", s, st(meta, tens(lambda t: t[first].view(-1).__setitem__(0, float("inf")))), "error"),
        ("weight_shape_wrong", s, st(meta, tens(lambda t: t.__setitem__(wkey, t[wkey][:1]))), "error"),
        ("weight_missing", s, st(meta, tens(lambda t: t.pop(wkey))), "error"),
        ("weight_extra", s, st(meta, tens(lambda t: t.__setitem__("bogus.weight", torch.zeros(3)))), "either"),
        ("weights_int8", s, st(meta, tens(lambda t: t.__setitem__(wkey, t[wkey].to(torch.int8)))), "either"),
        ("weights_float64", s, st(meta, {k: v.double() for k, v in tensors.items()}), "either"),
        ("truncated_half", s, good[: len(good) // 2], "error"),
        ("truncated_header", s, good[: 8 + hlen // 2], "error"),
        ("header_len_huge", s, struct.pack("<Q", 2**60) + good[8:], "error"),
        ("header_len_zero", s, struct.pack("<Q", 0) + good[8:], "error"),
        ("header_json_broken", s, good[:8] + b"[" + good[9:], "error"),
        ("empty", s, b"", "error"),
        ("pickle_named_safetensors", s, evil_raw, "error"),
        ("legacy_pt_state_dict", ".pt", legacy, "either"),
        ("pt_code_object", ".pt", evil_pt, "error"),
        ("pt_raw_pickle_code", ".pt", evil_raw, "error"),
        ("pth_code_object", ".pth", evil_pt, "error"),
        ("pt_truncated", ".pt", legacy[: len(legacy) // 2], "error"),
        ("pt_meta_wrong_types", ".pt", _pt_with_meta(tensors, {"num_classes": "five", "class_names": 5}), "error"),
        ("txt_suffix", ".txt", good, "either"),
    ]


def _pt_with_meta(tensors, meta) -> bytes:
    import torch
    buf = io.BytesIO()
    torch.save({"state_dict": tensors, "metadata": meta, "cryoguard": meta}, buf)
    return buf.getvalue()


def section_ckpt(fx: Fixtures) -> None:
    d = fx.work / "ckpt"
    d.mkdir(exist_ok=True)
    api_cases = []
    resume_cases = {"valid", "meta_string_5", "num_classes_text", "class_names_short", "cube_4096",
                    "nan_weights", "pt_code_object", "history_garbage", "training_string", "metrics_list",
                    "fc_widths_1e6", "truncated_half"}
    for case, suffix, data, expect in ckpt_cases(fx):
        p = d / f"{case}{suffix}"
        p.write_bytes(data)
        api_cases.append((case, p, expect))
        cli("ckpt", case, ["classify", str(fx.ds), "--model", str(p), "--out", str(fx.out / "ck.csv"),
                           "--device", "cpu"], expect, file_mb=mb(p), timeout=120)
        cli("ckpt", case, ["attack", str(fx.ds), "--model", str(p), "--attack", "fgsm",
                           "--out", str(fx.out / "ck_att.npz"), "--device", "cpu"], expect,
            file_mb=mb(p), timeout=120)
        if case in resume_cases:
            # --resume of a copy (a resumed run writes over its checkpoint)
            q = fx.out / f"resume_{case}{suffix}"
            shutil.copy(p, q)
            for extra in fx.out.glob(f"resume_{case}.state*"):
                extra.unlink()
            rexp = "either" if case in ("valid", "history_garbage", "training_string", "metrics_list") else expect
            cli("ckpt", case, ["train", "--resume", str(q), "--epochs", "2", "--batch-size", "8",
                               "--device", "cpu", "--quiet"], rexp, file_mb=mb(p), timeout=180)
            cli("ckpt", case, ["train", "--init", str(p), "--data", str(fx.ds), "--epochs", "1",
                               "--batch-size", "8", "--out", str(fx.out / "init.safetensors"),
                               "--device", "cpu", "--quiet"], "either" if expect != "error" else "error",
                file_mb=mb(p), timeout=180)
    api("ckpt", "checkpoint", api_cases)


# --------------------------------------------------------------------------- other pick formats, zarr, tiff


def section_formats(fx: Fixtures) -> None:
    d = fx.work / "formats"
    d.mkdir(exist_ok=True)
    cases: list[tuple[str, str, bytes, str]] = []
    cp = {"pickable_object_name": "ribo", "user_id": "u", "session_id": "1", "run_name": "t",
          "voxel_spacing": 10.0, "unit": "angstrom",
          "points": [{"location": {"x": 320.0, "y": 320.0, "z": 160.0}, "instance_id": 0, "score": 1.0,
                      "transformation_": np.eye(4).tolist()}]}

    def cpj(**kv):
        c = json.loads(json.dumps(cp))
        c.update(kv)
        return json.dumps(c).encode()

    pt = cp["points"][0]
    cases += [
        ("copick_valid", ".json", cpj(), "ok"),
        ("copick_not_json", ".json", b"{oops", "error"),
        ("copick_list_of_numbers", ".json", b"[1,2,3]", "error"),
        ("copick_points_missing", ".json", cpj(points=None), "error"),
        ("copick_location_text", ".json", cpj(points=[{**pt, "location": {"x": "a", "y": 1, "z": 1}}]), "error"),
        ("copick_location_missing_z", ".json", cpj(points=[{**pt, "location": {"x": 1, "y": 1}}]), "error"),
        ("copick_location_nan", ".json", cpj(points=[{**pt, "location": {"x": float("nan"), "y": 1, "z": 1}}]),
         "error"),
        ("copick_transform_bad", ".json", cpj(points=[{**pt, "transformation_": [[1, 2]]}]), "error"),
        ("copick_voxel_negative", ".json", cpj(voxel_spacing=-10), "either/error"),  # CLI gives the size
        ("copick_voxel_text", ".json", cpj(voxel_spacing="ten"), "either/error"),
        ("copick_unit_nm", ".json", cpj(unit="parsec"), "either"),
        ("copick_deep_nesting", ".json", b"[" * 100000 + b"]" * 100000, "error"),
        ("copick_huge_number", ".json", cpj(points=[{**pt, "location": {"x": 1e400, "y": 1, "z": 1}}]), "error"),
        ("copick_name_unicode", ".json", cpj(pickable_object_name="リボソーム"), "either"),
        ("copick_bom", ".json", b"\xef\xbb\xbf" + cpj(), "either"),
    ]
    row = [0.0] * 35
    row[0], row[23], row[24], row[25], row[19], row[21] = 1, 32, 32, 16, 1, 1
    tbl = " ".join(str(v) for v in row)
    cases += [
        ("dynamo_valid", ".tbl", (tbl + "\n").encode(), "ok"),
        ("dynamo_short_row", ".tbl", b"1 0 0 0 0 0\n", "error"),
        ("dynamo_ragged", ".tbl", (tbl + "\n" + " ".join(tbl.split()[:30]) + "\n").encode(), "error"),
        ("dynamo_text", ".tbl", (tbl.replace("32", "abc", 1) + "\n").encode(), "error"),
        ("dynamo_nan", ".tbl", (tbl.replace("32", "nan", 1) + "\n").encode(), "error"),
        ("dynamo_empty", ".tbl", b"", "either"),  # documented: "holds no particles"
        ("dynamo_huge_class", ".tbl", (" ".join(str(v) for v in row[:21] + [3e7] + row[22:]) + "\n").encode(),
         "either"),
        ("dynamo_binary", ".tbl", bytes(range(256)) * 4, "error"),
    ]
    cases += [
        ("imod_magic_only", ".mod", b"IMODV1.2", "error"),
        ("imod_truncated_header", ".mod", b"IMODV1.2" + b"\0" * 100, "error"),
        ("imod_garbage", ".mod", b"IMODV1.2" + bytes(random.Random(5).getrandbits(8) for _ in range(4000)), "error"),
        ("imod_text", ".mod", b"not a model at all", "error"),
        ("imod_empty", ".mod", b"", "error"),
    ]
    cb = ("data_cryolo\n\nloop_\n_CoordinateX\n_CoordinateY\n_CoordinateZ\n_Width\n_Height\n_Depth\n"
          "_EstWidth\n_EstHeight\n_Confidence\n_NumBoxes\n")
    cases += [
        ("cbox_valid", ".cbox", (cb + "28 28 16 8 8 8 8 8 0.9 1\n").encode(), "ok"),
        ("cbox_na", ".cbox", (cb + "28 28 16 <NA> <NA> <NA> <NA> <NA> <NA> <NA>\n").encode(), "either"),
        ("cbox_text", ".cbox", (cb + "abc 28 16 8 8 8 8 8 0.9 1\n").encode(), "error"),
        ("cbox_no_z", ".cbox", cb.replace("_CoordinateZ\n", "").encode() + b"28 28 8 8 8 8 8 0.9 1\n", "error"),
        ("cbox_ragged", ".cbox", (cb + "28 28 16 8\n").encode(), "error"),
        ("cbox_empty", ".cbox", b"", "error"),
        ("cbox_no_block", ".cbox", b"data_other\nloop_\n_foo\n1\n", "error"),
    ]
    for case, suffix, data, _ in cases:
        (d / f"{case}{suffix}").write_bytes(data)
    api_cases = [(c, d / f"{c}{s}", e) for c, s, _, e in cases]
    for case, p, expect in api_cases:
        cli("formats", case, ["extract", "--picks", str(p), str(fx.tomo), "--out", str(fx.out / "fmt.npz"),
                              "--size", "16", "--border", "pad", "--picks-voxel-size", "10"],
            expect, file_mb=mb(p), timeout=120)
    api("formats", "picks", api_cases)
    # OME-Zarr and TIFF tomograms
    tomos = zarr_cases(fx, d) + tiff_cases(fx, d)
    for case, p, expect in tomos:
        cli("formats", case, ["pick", str(p), "--out", str(fx.out / "fmt.star")], expect, file_mb=mb(p))
    api("formats", "tomogram", tomos)


def zarr_cases(fx: Fixtures, d: Path) -> list[tuple[str, Path, str]]:
    try:
        import zarr
    except ImportError:
        return []
    import mrcfile
    with mrcfile.open(fx.tomo, permissive=True) as f:
        data = np.array(f.data, dtype=np.float32)
    good_ms = {"multiscales": [{"version": "0.4", "axes": [
        {"name": "z", "type": "space", "unit": "angstrom"}, {"name": "y", "type": "space", "unit": "angstrom"},
        {"name": "x", "type": "space", "unit": "angstrom"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [10.0, 10.0, 10.0]}]}]}]}

    def make(name, attrs_text: str | None, mutate=None):
        p = d / f"{name}.zarr"
        if p.exists():
            shutil.rmtree(p)
        g = zarr.open_group(str(p), mode="w", zarr_format=2)
        g.create_array("0", data=data, chunks=(16, 32, 32))
        if attrs_text is not None:
            (p / ".zattrs").write_text(attrs_text)
        if mutate:
            mutate(p)
        return p

    def ms(**kv):
        m = json.loads(json.dumps(good_ms))
        m["multiscales"][0].update(kv)
        return json.dumps(m)

    def scale(v):
        m = json.loads(json.dumps(good_ms))
        m["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = v
        return json.dumps(m)

    out = [
        ("zarr_valid", make("valid", json.dumps(good_ms)), "ok"),
        ("zarr_zattrs_broken", make("zattrs_broken", "{oops"), "error"),
        ("zarr_zattrs_list", make("zattrs_list", "[1,2]"), "error"),
        ("zarr_no_multiscales", make("no_ms", "{}"), "either"),
        ("zarr_multiscales_string", make("ms_string", '{"multiscales": "x"}'), "error"),
        ("zarr_datasets_empty", make("ds_empty", ms(datasets=[])), "error"),
        ("zarr_path_traversal", make("traversal", ms(datasets=[{"path": "../../../etc"}])), "error"),
        ("zarr_path_missing", make("path_missing", ms(datasets=[{"path": "7"}])), "error"),
        ("zarr_axes_two", make("axes_two", ms(axes=[{"name": "y"}, {"name": "x"}])), "error"),
        ("zarr_axes_dupe", make("axes_dupe", ms(axes=[{"name": "z"}, {"name": "z"}, {"name": "x"}])), "error"),
        ("zarr_unit_bogus", make("unit_bogus", json.dumps(good_ms).replace('"angstrom"', '"furlong"')), "either"),
        ("zarr_scale_zero", make("scale_zero", scale([0, 0, 0])), "either"),
        ("zarr_scale_negative", make("scale_neg", scale([-10, 10, 10])), "either"),
        ("zarr_scale_text", make("scale_text", scale(["a", "b", "c"])), "either"),
        ("zarr_scale_short", make("scale_short", scale([10])), "either"),
        ("zarr_chunk_missing", make("chunk_missing", json.dumps(good_ms),
                                    lambda p: [c.unlink() for c in list((p / "0").glob("0.*"))[:1]]), "either"),
        ("zarr_zarray_broken", make("zarray_broken", json.dumps(good_ms),
                                    lambda p: (p / "0" / ".zarray").write_text("{oops")), "error"),
        ("zarr_zarray_huge_shape", make("zarray_huge", json.dumps(good_ms), lambda p: (p / "0" / ".zarray").write_text(
            (p / "0" / ".zarray").read_text().replace("[\n        32,\n        64,\n        64\n    ]",
                                                      "[100000, 100000, 100000]"))), "either"),
    ]
    return out


def tiff_cases(fx: Fixtures, d: Path) -> list[tuple[str, Path, str]]:
    try:
        import tifffile
    except ImportError:
        return []
    import mrcfile
    with mrcfile.open(fx.tomo, permissive=True) as f:
        data = np.array(f.data, dtype=np.float32)
    out = []

    def w(name, expect, arr=data, **kw):
        p = d / f"{name}.tif"
        tifffile.imwrite(p, arr, **kw)
        out.append((name, p, expect))

    w("tiff_valid", "ok")
    w("tiff_imagej_spacing_zero", "either", imagej=True, metadata={"spacing": 0, "unit": "nm"},
      resolution=(0.1, 0.1))
    w("tiff_imagej_unit_bogus", "either", imagej=True, metadata={"spacing": 1, "unit": "furlong"})
    w("tiff_ome_xml_broken", "either", description="<OME><Image><Pixels PhysicalSizeX='abc'", metadata=None)
    w("tiff_ome_size_negative", "either", description=(
        '<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">'
        '<Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="float" SizeX="64" SizeY="64" SizeZ="32" SizeC="1" '
        'SizeT="1" PhysicalSizeX="-1" PhysicalSizeY="nan" PhysicalSizeZ="0"/></Image></OME>'), metadata=None)
    w("tiff_2d", "either", arr=data[0])
    w("tiff_4d", "either", arr=np.stack([data, data]))
    w("tiff_rgb", "either", arr=np.zeros((8, 32, 32, 3), np.uint8), photometric="rgb")
    w("tiff_complex", "either", arr=data.astype(np.complex64))
    p = d / "tiff_truncated.tif"
    p.write_bytes((d / "tiff_valid.tif").read_bytes()[:5000])
    out.append(("tiff_truncated", p, "error"))
    p = d / "tiff_header_only.tif"
    p.write_bytes(b"II*\0" + struct.pack("<I", 10**9))
    out.append(("tiff_bad_ifd_offset", p, "error"))
    return out


# --------------------------------------------------------------------------- output faults


def _fill(mount: Path) -> None:
    """Fill a tmpfs to the last byte (ENOSPC on any further write)."""
    for name, block in (("filler", 65536), ("filler2", 512), ("filler3", 1)):
        try:
            with open(mount / name, "ab") as fh:
                while True:
                    fh.write(b"\0" * block)
                    fh.flush()
        except OSError:
            pass


def section_faults(fx: Fixtures) -> None:
    full, ro = Path("/tmp/cg_probe_full"), Path("/tmp/cg_probe_ro")
    mounted = []
    for mnt in (full, ro):
        mnt.mkdir(exist_ok=True)
        subprocess.run(["umount", str(mnt)], capture_output=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
        if r.returncode == 0:
            mounted.append(mnt)
    if full in mounted:
        (full / "old").mkdir()
    if ro in mounted:
        (ro / "old").mkdir()
    outs = {"simulate": ".mrc", "simulate-dataset": ".npz", "pick": ".star", "extract": ".npz",
            "classify": ".csv", "attack": ".npz", "train": ".safetensors", "evaluate": "", "merge": ".csv",
            "pick-dir": "", "extract-dir": "", "classify-dir": ""}

    def argv_for(cmd: str, out: Path) -> list[str]:
        return {
            "simulate": ["simulate", "--out", str(out), "--shape", "32", "64", "64", "--particles", "4"],
            "simulate-dataset": ["simulate-dataset", "--out", str(out), "--per-class", "4"],
            "pick": ["pick", str(fx.tomo), "--out", str(out)],
            "extract": ["extract", "--picks", str(fx.truth), str(fx.tomo), "--out", str(out)],
            "classify": ["classify", str(fx.ds), "--model", str(fx.ck), "--out", str(out), "--device", "cpu"],
            "attack": ["attack", str(fx.ds), "--model", str(fx.ck), "--attack", "fgsm", "--out", str(out),
                       "--device", "cpu"],
            "train": ["train", "--data", str(fx.ds), "--tiny", "--epochs", "2", "--batch-size", "8",
                      "--out", str(out), "--device", "cpu", "--quiet"],
            "evaluate": ["evaluate", str(fx.ck), "--data", str(fx.ds), "--out", str(out), "--quick",
                         "--device", "cpu", "--no-margins", "--attack", "fgsm@0.1"],
            "merge": ["merge", str(fx.out / "b.csv"), str(fx.out / "b.csv"), "--out", str(out)],
            "pick-dir": ["pick", str(fx.tomo), "--out-dir", str(out)],
            "extract-dir": ["extract", "--picks", str(fx.truth), str(fx.tomo), "--out-dir", str(out)],
            "classify-dir": ["classify", str(fx.ds), "--model", str(fx.ck), "--out-dir", str(out),
                             "--device", "cpu"],
        }[cmd]

    for cmd, suffix in outs.items():
        dirout = fx.out / f"isdir_{cmd}{suffix}"
        if not suffix:
            dirout = fx.out / f"isfile_{cmd}"
            dirout.write_text("a file where a folder is wanted")
        else:
            dirout.mkdir(exist_ok=True)
        faults = [("output_is_directory" if suffix else "output_dir_is_file", dirout),
                  ("parent_missing", Path(f"/tmp/cg_probe_nonexistent_{cmd}/sub") / f"o{suffix or '_dir'}")]
        if ro in mounted:
            faults.append(("read_only_fs", ro / "old" / f"o_{cmd}{suffix or '_dir'}"))
        if full in mounted:
            faults.append(("disk_full", full / "old" / f"o_{cmd}{suffix or '_dir'}"))
        for fault, out in faults:
            old_content = None
            if fault in ("read_only_fs", "disk_full") and suffix and not out.exists():
                subprocess.run(["mount", "-o", "remount,rw", str(ro)], capture_output=True) if fault == "read_only_fs" else None
                out.write_bytes(b"OLD OUTPUT " * 10)
            if fault == "read_only_fs":
                subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
            if fault == "disk_full":
                _fill(full)
            if out.exists() and out.is_file():
                old_content = out.read_bytes()

            def check(rec, out=out, old=old_content):
                probs = []
                folder = out.parent if out.parent.exists() else None
                if folder is not None:
                    left = [p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name]
                    if left:
                        probs.append(f"temporary files left: {left[:3]}")
                if old is not None and (not out.exists() or out.read_bytes() != old):
                    probs.append("older output damaged")
                if rec["seconds"] > 20 and rec["verdict"] == "ERROR":
                    probs.append(f"failed only after {rec['seconds']:.0f} s")
                return "; ".join(probs)

            if fault == "parent_missing":
                # the package creates missing parent folders (atomic_output) except where a
                # writer refuses them (MRC, picks): either is fine, a lie is not
                shutil.rmtree(out.parents[1], ignore_errors=True)

                def check(rec, out=out):  # noqa: F811 - this fault's own check
                    if rec["verdict"] == "OK" and not out.exists():
                        return "exit 0 but no output written"
                    left = [p.name for p in out.parents[1].rglob("*") if ".tmp" in p.name] \
                        if out.parents[1].exists() else []
                    return f"temporary files left: {left[:3]}" if left else ""

                cli("faults", f"{cmd}:{fault}", argv_for(cmd, out), "either", timeout=300, check=check)
                shutil.rmtree(out.parents[1], ignore_errors=True)
                continue
            cli("faults", f"{cmd}:{fault}", argv_for(cmd, out), "error", timeout=300, check=check)
            if fault == "disk_full":
                for f in ("filler", "filler2", "filler3"):
                    (full / f).unlink(missing_ok=True)
    for mnt in mounted:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# --------------------------------------------------------------------------- kills


def _weights(path: Path) -> dict:
    from safetensors.numpy import load_file
    return load_file(str(path))


def _history(path: Path) -> list:
    from safetensors import safe_open
    with safe_open(str(path), "np") as f:
        return json.loads(f.metadata()["cryoguard"]).get("history", [])


def section_kills(fx: Fixtures, trials: int) -> None:
    kd = fx.work / "kills"
    if kd.exists():
        shutil.rmtree(kd)
    kd.mkdir()
    ds = kd / "kds.npz"
    subprocess.run([CLI, "simulate-dataset", "--out", str(ds), "--per-class", "24", "--quiet"], check=True)
    base = ["train", "--data", str(ds), "--tiny", "--epochs", "4", "--batch-size", "8", "--device", "cpu",
            "--quiet", "--seed", "3"]
    ref = kd / "ref" / "ck.safetensors"
    ref.parent.mkdir()
    t0 = time.perf_counter()
    rec = cli("kills", "reference", [*base, "--out", str(ref)], "ok", timeout=600)
    t_ref = time.perf_counter() - t0
    ref_w = _weights(ref) if rec["verdict"] == "OK" else None
    rng = random.Random(2026)
    for trial in range(trials):
        sig = signal.SIGTERM if trial % 4 == 3 else signal.SIGKILL
        run = kd / f"trial{trial}"
        run.mkdir()
        ck = run / "ck.safetensors"
        kills: list[float] = []
        n_kills = 2 if trial % 3 == 1 else 1
        attempts, done = 0, False
        while attempts < 8 and not done:
            attempts += 1
            argv = ([CLI, "train", "--resume", str(ck), "--epochs", "4", "--device", "cpu", "--quiet"]
                    if ck.exists() else [CLI, *base, "--out", str(ck)])
            proc = subprocess.Popen(_limited(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            if len(kills) < n_kills:
                delay = rng.uniform(1.0, max(1.5, t_ref * 0.9))
                try:
                    proc.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    proc.send_signal(sig)
                    kills.append(round(delay, 2))
                    _, errs = proc.communicate(timeout=600)
                    if sig == signal.SIGTERM and proc.returncode != 0:
                        verdict, last = verdict_of(proc.returncode, errs)
                        RECORDS.append(dict(section="kills", case=f"trial{trial} SIGTERM exit", cmd="train",
                                            verdict=verdict, last=last, problems=[f"SIGTERM gave {verdict}"],
                                            tail=errs[-800:]))
                    continue
            _, errs = proc.communicate(timeout=600)
            verdict, last = verdict_of(proc.returncode, errs)
            if verdict != "OK":
                RECORDS.append(dict(section="kills", case=f"trial{trial} resume", cmd="train", verdict=verdict,
                                    last=last, problems=[f"resume failed: {verdict}"], tail=errs[-800:]))
                print(f"  FAIL [kills] trial{trial}: resume {verdict}: {last}", flush=True)
                break
            done = True
        probs = []
        if not done:
            probs.append("never completed")
        left = [p.name for p in run.iterdir() if ".tmp" in p.name or "pending" in p.name]
        if left:
            probs.append(f"left behind: {left}")
        if done:
            if not any(p.name.endswith(".state.safetensors") for p in run.iterdir()):
                probs.append("no optimizer state file")
            hist = _history(ck)
            if any(isinstance(v, float) and v != v for h in hist for v in h.values()):
                probs.append("NaN in history")
            if [h.get("epoch") for h in hist] != [1, 2, 3, 4]:
                probs.append(f"history epochs {[h.get('epoch') for h in hist]}")
            if ref_w is not None:
                w = _weights(ck)
                diff = max(float(np.max(np.abs(w[k].astype(np.float64) - ref_w[k]))) for k in ref_w)
                if diff > 1e-6:
                    probs.append(f"weights differ from the uninterrupted run by {diff:.2e}")
            else:
                diff = None
        rec = dict(section="kills", case=f"trial{trial} {sig.name} at {kills}", cmd="train", verdict="INFO",
                   last=f"attempts {attempts}", problems=probs)
        RECORDS.append(rec)
        print(f"  kills trial{trial}: {sig.name} at {kills} s, attempts {attempts}: "
              f"{'; '.join(probs) if probs else 'ok'}", flush=True)


# --------------------------------------------------------------------------- memory


def section_memory(fx: Fixtures) -> None:
    md = fx.work / "memory"
    md.mkdir(exist_ok=True)
    rows = []
    sets = {}
    for n_per in (200, 1000):
        p = md / f"m{n_per * 5}.npz"
        if not p.exists():
            rc, out, err, secs, rss = spawn([CLI, "simulate-dataset", "--out", str(p), "--per-class", str(n_per),
                                             "--quiet"], 1200)
            rows.append(("simulate-dataset", n_per * 5, "-", rss, secs, mb(p)))
            print(f"  memory simulate-dataset N={n_per * 5}: {rss:.0f} MB in {secs:.0f} s", flush=True)
        sets[n_per * 5] = p
    plan = [(1000, 32), (1000, 128), (5000, 32)]
    for cmd in ("classify", "attack"):
        for n, bs in plan:
            out = md / (f"o_{cmd}_{n}_{bs}" + (".csv" if cmd == "classify" else ".npz"))
            argv = [cmd, str(sets[n]), "--model", str(fx.ck), "--batch-size", str(bs), "--out", str(out),
                    "--device", "cpu", "--quiet"]
            if cmd == "attack":
                argv[2:2] = ["--attack", "fgsm"]
            rec = cli("memory", f"{cmd} N={n} bs={bs}", argv, "ok", timeout=1200)
            rows.append((cmd, n, bs, rec["rss_mb"], rec["seconds"], mb(sets[n])))
            print(f"  memory {cmd} N={n} bs={bs}: {rec['rss_mb']:.0f} MB in {rec['seconds']:.0f} s "
                  f"(dataset {mb(sets[n]):.0f} MB)", flush=True)
            out.unlink(missing_ok=True)
    for cmd in ("classify", "attack"):
        r = {(n, bs): rss for c, n, bs, rss, _, _ in rows if c == cmd}
        if (1000, 32) in r and (5000, 32) in r:
            growth = r[(5000, 32)] - r[(1000, 32)]
            ds_growth = mb(sets[5000]) - mb(sets[1000])
            prob = [] if growth < 0.25 * ds_growth else [
                f"RSS grows with N: +{growth:.0f} MB from N=1000 to 5000 (dataset +{ds_growth:.0f} MB)"]
            RECORDS.append(dict(section="memory", case=f"{cmd} growth", cmd=cmd, verdict="INFO",
                                last=f"+{growth:.0f} MB", problems=prob))
            for p in prob:
                print(f"  FAIL [memory] {cmd}: {p}", flush=True)
    RECORDS.append(dict(section="memory", case="table", cmd="-", verdict="INFO", rows=rows, problems=[]))


# --------------------------------------------------------------------------- main


def summary() -> None:
    runs = [r for r in RECORDS if r.get("rc", 0) is not None and r["cmd"] not in ("api-worker",)
            and not str(r["cmd"]).startswith("api") and r["verdict"] != "INFO"]
    apis = [r for r in RECORDS if str(r["cmd"]).startswith("api:") and r["verdict"] != "INFO"]
    print("\n==== probe summary ====")
    print(f"CLI runs: {len(runs)}  tracebacks: {sum(r['verdict'] == 'TRACEBACK' for r in runs)}  "
          f"clean errors: {sum(r['verdict'] == 'ERROR' for r in runs)}  exit 0: "
          f"{sum(r['verdict'] == 'OK' for r in runs)}  other exits: "
          f"{sum(r['verdict'] not in ('TRACEBACK', 'ERROR', 'OK') for r in runs)}")
    print(f"API cases: {len(apis)}  non-CryoGuardError: {sum(r['verdict'] in ('CRASH', 'LOST') for r in apis)}")
    sections = sorted({r["section"] for r in RECORDS})
    for s in sections:
        rs = [r for r in RECORDS if r["section"] == s and r["verdict"] != "INFO" or
              (r["section"] == s and r["problems"])]
        bad = [r for r in rs if r["problems"]]
        print(f"  {s:9s} cases {len(rs):4d}  failing {len(bad):3d}")
    print(f"pickle code ran: {'YES' if any('PICKLE' in p for r in RECORDS for p in r['problems']) else 'never'}")
    print(f"failing cases total: {sum(bool(r['problems']) for r in RECORDS)}")
    for r in RECORDS:
        if r["section"] == "memory" and r["case"] == "table":
            print("memory (peak RSS, MB):")
            for cmd, n, bs, rss, secs, dsmb in r["rows"]:
                print(f"  {cmd:16s} N={n:5d} batch={bs!s:>4s}  RSS {rss:7.0f} MB  {secs:6.0f} s  dataset {dsmb:5.0f} MB")
    if BASE_RSS:
        print("baseline RSS (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in BASE_RSS.items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/cryoguard_probe")
    ap.add_argument("--sections", default="mrc,star,csv,npz,ckpt,formats,faults,kills")
    ap.add_argument("--kill-trials", type=int, default=6)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    sections = args.sections.split(",")
    if "all" in sections:
        sections = ["mrc", "star", "csv", "npz", "ckpt", "formats", "faults", "kills", "memory"]
    MARKER.unlink(missing_ok=True)
    fx = Fixtures(Path(args.work))
    t0 = time.perf_counter()
    baselines(fx)
    for s in sections:
        print(f"-- section {s}", flush=True)
        if s == "mrc":
            section_mrc(fx)
        elif s in ("star", "csv"):
            section_tables(fx, s)
        elif s == "npz":
            section_npz(fx)
        elif s == "ckpt":
            section_ckpt(fx)
        elif s == "formats":
            section_formats(fx)
        elif s == "faults":
            section_faults(fx)
        elif s == "kills":
            section_kills(fx, args.kill_trials)
        elif s == "memory":
            section_memory(fx)
    summary()
    print(f"probe time {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(RECORDS, indent=1, default=str))
    return 1 if any(r["problems"] for r in RECORDS) else 0


if __name__ == "__main__":
    sys.exit(main())

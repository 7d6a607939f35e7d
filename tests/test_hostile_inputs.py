"""Hostile inputs to every command: one ``error:`` line, exit 2, no traceback, nothing written.

One generator (:func:`build_hostile`) writes the whole set into one folder: broken and
unusual images, tampered and foreign run folders, broken configs, dataset files that are not
what they claim, files where folders belong and the reverse. Each case runs one command on one
of them and checks its outcome; the folder and the shared trained run must be unchanged to the
byte and the nanosecond afterwards. Valid-but-unusual images (16-bit, palette, gray, RGBA) and
an empty config are accepted and must give a correct result instead.

Most cases call the entry points in-process (an escaping exception fails the test with its
traceback); a few run as real processes (``python -m vqcausal.cli``, ``train.py``, the task
script) to check what a user sees there, warnings included.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from PIL import Image
from test_hostile_runs import other_config, tamper_header, toy_pngs

from vqcausal.cli import main as cli
from vqcausal.config import read_toml
from vqcausal.train.checkpoint import latest_checkpoint

REPO = Path(__file__).resolve().parent.parent
IMAGE_ERRORS = {
    "zero.png": "not an image Pillow can read",
    "truncated.png": "cannot decode image",
    "text.png": "not an image Pillow can read",
    "huge.png": "image too large",
    "dir.png": "dir.png",  # retrieve: "is a folder but b.png is not"; intervene: "is a directory"
    "nope.png": "file not found",
}
#: valid but unusual images -> the top action a retrieval must give (None: any, colour is lost)
UNUSUAL = {
    "deep16.png": None,
    "palette.png": "position+",
    "gray.png": None,
    "rgba.png": "position+",
}
RUN_ERRORS = {
    "run-tampered": "cannot load weights",
    "run-other": "cannot load weights (size mismatch",
    "run-shape": "image_shape [3, 'x', 16] is not three positive integers",
    "run-empty": "no checkpoint yet",
    "run-file": "is a file",
    "run-nope": "run folder not found",
}
CONFIG_ERRORS = {
    "unknown-key.toml": "unknown config key 'train.stage1_stepz'",
    "wrong-type.toml": "train.stage1_steps",
    "binary.toml": "binary.toml",
    "config-dir.toml": "cannot read config file",
    "nope.toml": "config file not found",
}


# ---- the hostile set ---------------------------------------------------------------------------
def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_png(path: Path, side: int = 20_000) -> None:
    """A well-formed PNG whose IHDR claims side x side RGB pixels, in 65 bytes."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    chunks = [(b"IHDR", header), (b"IDAT", zlib.compress(b"")), (b"IEND", b"")]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(k, b) for k, b in chunks))


def _images(folder: Path) -> None:
    """a.png, b.png (a toy pair one position step apart), then broken and unusual images."""
    a, _ = toy_pngs(folder)
    rgb = np.asarray(Image.open(a).convert("RGB"))
    (folder / "zero.png").write_bytes(b"")
    data = a.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "text.png").write_text("hello, I am a text file\n")
    huge_png(folder / "huge.png")
    (folder / "dir.png").mkdir()
    deep = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(deep).save(folder / "deep16.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(rgb).convert("L").save(folder / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")  # opaque: pixels as a.png
    for side, name in (("left", "truncated.png"), ("right", "b.png")):
        (folder / side).mkdir()
        shutil.copy(folder / name, folder / side / "p0.png")


def bad_shape(run: Path) -> None:
    """meta.json's image shape with a string in it (a hand-edited checkpoint)."""
    meta_path = latest_checkpoint(run).path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model_args"]["image_shape"] = [3, "x", 16]
    meta_path.write_text(json.dumps(meta))


def _runs(folder: Path, run: Path) -> None:
    """Copies of the trained run with tampered weights, another config or a broken shape;
    an empty folder and a file where a run belongs; metrics.json files for the report."""
    tampers = [
        ("run-tampered", tamper_header),
        ("run-other", other_config),
        ("run-shape", bad_shape),
    ]
    for name, tamper in tampers:
        shutil.copytree(run, folder / name, ignore=shutil.ignore_patterns("eval"))
        tamper(folder / name)
    (folder / "run-empty").mkdir()
    (folder / "run-file").write_bytes(b"")
    for name, text in [
        ("eval-zero", ""),
        ("eval-text", "metrics, as prose"),
        ("eval-list", "[1, 2, 3]"),
        ("eval-ok", json.dumps({"step": 1, "latent": "vq"})),
    ]:
        (folder / name).mkdir()
        (folder / name / "metrics.json").write_text(text)


def _configs(folder: Path) -> None:
    smoke = read_toml(REPO / "configs" / "smoke.toml")
    for name, section in [
        ("unknown-key.toml", {"stage1_stepz": 3}),
        ("wrong-type.toml", {"stage1_steps": "many"}),
    ]:
        data = {**smoke, "train": {**smoke["train"], **section}}
        (folder / name).write_text(tomli_w.dumps(data))
    (folder / "binary.toml").write_bytes((folder / "a.png").read_bytes())
    (folder / "zero.toml").write_bytes(b"")
    (folder / "config-dir.toml").mkdir()


def _datasets(folder: Path) -> None:
    """Dataset files that are not what they claim, and two image folders with a bad image."""
    (folder / "zero.h5").write_bytes(b"")
    (folder / "text.npz").write_text("not a zip archive\n")
    for name, bad in (("folder-huge", "huge.png"), ("folder-truncated", "truncated.png")):
        (folder / name).mkdir()
        shutil.copy(folder / "a.png", folder / name / "0.png")
        shutil.copy(folder / bad, folder / name / "1.png")
        (folder / name / "factors.csv").write_text("filename,f\n0.png,0\n1.png,1\n")
    (folder / "file.txt").write_text("a file where a folder belongs\n")
    (folder / "nonempty").mkdir()
    (folder / "nonempty" / "keep.txt").write_text("mine\n")


def build_hostile(folder: Path, run: Path) -> Path:
    """The whole hostile set in ``folder`` (see the module docstring); ``run`` is a good run."""
    _images(folder)
    _runs(folder, run)
    _configs(folder)
    _datasets(folder)
    return folder


@pytest.fixture(scope="module")
def hostile(trained_run, tmp_path_factory) -> Path:
    return build_hostile(tmp_path_factory.mktemp("hostile"), trained_run)


def test_the_hostile_set_is_what_it_claims(hostile):
    modes = {name: Image.open(hostile / name).mode for name in UNUSUAL}
    assert modes == {"deep16.png": "I;16", "palette.png": "P", "gray.png": "L", "rgba.png": "RGBA"}
    huge = (hostile / "huge.png").read_bytes()  # a header only: no pixels
    assert struct.unpack(">II", huge[16:24]) == (20_000, 20_000) and len(huge) < 100
    assert (hostile / "zero.png").stat().st_size == 0 and (hostile / "dir.png").is_dir()


def listing(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``roots`` (the roots included): (size, mtime in ns)."""
    paths = [p for root in roots for p in (root, *root.rglob("*"))]
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in paths}


# ---- the cases ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """``argv`` with ``{h}`` (the hostile folder), ``{run}`` and ``{out}`` (an empty folder).

    ``error`` is a fragment of the one expected error line; ``check`` instead marks a valid
    input and is called with (stdout, out folder). ``process`` runs it as a real process.
    """

    argv: str
    error: str | None = None
    check: Callable[[str, Path], None] | None = None
    process: bool = False

    @property
    def id(self) -> str:
        text = self.argv.replace(ACTIONS, "").replace("{run}", "RUN").replace(" --run", "")
        return ("process: " if self.process else "") + re.sub(r"\{\w+\}/", "", text)


def retrieved(top: str | None = None) -> Callable[[str, Path], None]:
    """Check of ``retrieve --json``: three known actions, ranked; ``top`` first if given."""

    def check(stdout: str, out: Path) -> None:
        (pair,) = json.loads(stdout)["pairs"]
        names = [a["action"] for a in pair["actions"]]
        probabilities = [a["probability"] for a in pair["actions"]]
        assert set(names) <= {"position+", "position-", "hue+", "hue-"} and len(names) == 3
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.001
        assert top is None or names[0] == top, names

    return check


def intervened(stdout: str, out: Path) -> None:
    image = Image.open(out / "cf.png")
    assert image.mode == "RGB" and image.width >= 3 * 16 and "2 step(s)" in stdout


def default_info(stdout: str, out: Path) -> None:
    assert "shapes3d" in stdout and "object_hue+" in stdout  # an empty config is the default


ACTIONS = " --action hue+ --action position+"


def retrieve(a: str, b: str = "{h}/b.png", run: str = "{run}") -> str:
    return f"retrieve {a} {b} --run {run}"


def intervene(image: str = "{h}/a.png", run: str = "{run}", out: str = "{out}/cf.png") -> str:
    return f"intervene {image}{ACTIONS} --run {run} --out {out}"


TRAIN = "train --set runs='{h}/runs' "
CASES = [
    *(Case(retrieve(f"{{h}}/{name}"), error) for name, error in IMAGE_ERRORS.items()),
    Case(retrieve("{h}/a.png", "{h}/truncated.png"), "truncated.png"),
    Case(retrieve("{h}/left", "{h}/right"), "left/p0.png"),
    *(Case(retrieve(f"{{h}}/{n}") + " --json", check=retrieved(t)) for n, t in UNUSUAL.items()),
    *(Case(retrieve("{h}/a.png", run=f"{{h}}/{r}"), error) for r, error in RUN_ERRORS.items()),
    Case(retrieve("{h}/a.png") + " --top-k 0", "--top-k must be at least 1"),
    *(Case(intervene(f"{{h}}/{name}"), error) for name, error in IMAGE_ERRORS.items()),
    *(Case(intervene(f"{{h}}/{name}"), check=intervened) for name in UNUSUAL),
    *(Case(intervene(run=f"{{h}}/{r}"), error) for r, error in RUN_ERRORS.items()),
    Case(intervene(out="{h}/dir.png"), "dir.png is a folder"),
    Case(intervene(out="{h}/file.txt/cf.png"), "file.txt"),
    Case(intervene() + " --steps many", "argument --steps: invalid int value"),
    Case(intervene() + " --action size+", "unknown action 'size+'"),
    *(Case(f"evaluate {{h}}/{r} --fast", error) for r, error in RUN_ERRORS.items()),
    Case("evaluate {run} --fast --out {h}/file.txt", "is a file"),
    Case("evaluate {run} --fast --split valid", "unknown split 'valid'"),
    Case("evaluate {run} --fast --pairs 0", "--pairs must be at least 1"),
    Case("report {h}/run-nope", "run folder not found"),
    Case("report {h}/run-file", "is a file, not a run folder"),
    Case("report {run} --eval-dir {h}/eval-zero", "not valid JSON"),
    Case("report {run} --eval-dir {h}/eval-text", "not valid JSON"),
    Case("report {run} --eval-dir {h}/eval-list", "must hold a JSON object"),
    Case("report {run} --eval-dir {h}/run-nope", "no metrics.json"),
    Case("report {run} --eval-dir {h}/eval-ok --out {h}/dir.png", "dir.png is a folder"),
    Case("report {run} --eval-dir {h}/eval-ok --out {h}/file.txt/r.html", "file.txt is a file"),
    Case("data info --dataset nope", "unknown dataset 'nope'"),
    *(Case(f"data info --config {{h}}/{name}", error) for name, error in CONFIG_ERRORS.items()),
    Case("data info --config {h}/zero.toml", check=default_info),
    Case("data info --dataset toy --set train.stage1_steps=many", "train.stage1_steps"),
    Case("data info --dataset toy --set nonsense", "must look like section.key=value"),
    Case("data info --dataset shapes3d --path {h}/zero.h5", "not a readable HDF5 file"),
    Case("data info --dataset sprites --path {h}/text.npz", "not a .npz"),
    Case("data info --dataset folder --path {h}/file.txt", "factors file not found"),
    Case("data info --dataset folder --path {h}/folder-huge", "1.png is too large"),
    Case("data preview --dataset folder --path {h}/folder-truncated --out {out}/p.png", "1.png"),
    Case("data preview --dataset toy --out {h}/dir.png", "dir.png is a folder"),
    Case("data preview --dataset toy --out {h}/file.txt/p.png", "file.txt"),
    Case("data preview --config {h}/wrong-type.toml --out {out}/p.png", "train.stage1_steps"),
    Case("data export --dataset toy --out {h}/file.txt --train 4 --test 2", "file.txt"),
    Case("data export --dataset toy --out {h}/nonempty --train 4 --test 2", "not empty"),
    Case("data export --config {h}/unknown-key.toml --out {out}/x", "stage1_stepz"),
    *(Case(f"{TRAIN}--config {{h}}/{name}", error) for name, error in CONFIG_ERRORS.items()),
    Case(TRAIN + "--set train.stage1_steps=many", "train.stage1_steps"),
    Case(TRAIN + "--set train.stage1_steps=-1", "must be >= 0"),
    Case(TRAIN + "--stage 3", "argument --stage: invalid choice"),
    *(Case(f"train --resume {{h}}/{r}", error) for r, error in RUN_ERRORS.items()),
    Case("ablate --size enormous --dry-run", "unknown size 'enormous'"),
    Case("ablate --rhos abc --dry-run", "argument --rhos: invalid float value"),
    Case("ablate --rhos 0.5 --dry-run", "rho must be"),
    Case("ablate --set train.stage1_stepz=1 --dry-run", "unknown config key 'train.stage1_stepz'"),
    Case("ablate --set train.stage1_steps=many --dry-run", "train.stage1_steps"),
    Case("ablate --set oops --dry-run", "oops"),
    Case("ablate --out {h}/file.txt --dry-run", "file.txt is a file"),
    Case("ablate --jobs two --dry-run", "argument --jobs: invalid int value"),
    # the entry points as a user runs them
    Case(retrieve("{h}/truncated.png"), "truncated.png", process=True),
    Case("evaluate {h}/run-tampered --fast", "cannot load weights", process=True),
    Case("train.py --config {h}/wrong-type.toml", "train.stage1_steps", process=True),
    Case("tasks/imbalance_ablation.py --rhos abc --dry-run", "argument --rhos", process=True),
]


def _argv(case: Case, hostile: Path, run: Path, out: Path) -> list[str]:
    fill = {"{h}": str(hostile), "{run}": str(run), "{out}": str(out)}
    argv = case.argv.split()
    for key, value in fill.items():
        argv = [word.replace(key, value) for word in argv]
    return argv


def _command(argv: list[str]) -> list[str]:
    """``train.py`` and the task script as scripts, anything else as ``python -m vqcausal.cli``."""
    if argv[0].endswith(".py"):
        return [sys.executable, str(REPO / argv[0]), *argv[1:]]
    return [sys.executable, "-m", "vqcausal.cli", *argv]


@pytest.fixture(scope="module")
def processes(hostile, trained_run, tmp_path_factory) -> dict[Case, tuple[int, str, str, bool]]:
    """The process cases, all started at once (each spends seconds importing torch): per case
    exit status, stdout, stderr, and whether anything in the checked folders changed."""
    out = tmp_path_factory.mktemp("process-out")
    before = listing(hostile, trained_run, out)
    started = {
        case: subprocess.Popen(
            _command(_argv(case, hostile, trained_run, out)),
            cwd=hostile,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for case in CASES
        if case.process
    }
    done = {}
    for case, process in started.items():
        stdout, stderr = process.communicate(timeout=300)
        done[case] = (process.returncode, stdout, stderr)
    changed = listing(hostile, trained_run, out) != before
    return {case: (*result, changed) for case, result in done.items()}


def _in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli(argv)
    except SystemExit as stop:  # argparse of a sub-command
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_hostile_input(case, hostile, trained_run, tmp_path, capsys, monkeypatch, request):
    if case.process:
        code, out, err, changed = request.getfixturevalue("processes")[case]
    else:
        monkeypatch.chdir(hostile)  # a stray default output would land in the checked folder
        before = listing(hostile, trained_run)
        code, out, err = _in_process(_argv(case, hostile, trained_run, tmp_path), capsys)
        changed = listing(hostile, trained_run) != before
    assert "Traceback" not in out + err
    assert not changed, "something was written into the hostile folder or the run"
    if case.check is not None:
        assert code == 0, err
        case.check(out, tmp_path)
        return
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.error in lines[0]
    assert not any(tmp_path.iterdir()), "an output was written"

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
import os
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
from vqcausal.runs import latest_checkpoint

REPO = Path(__file__).resolve().parent.parent
IMAGE_ERRORS = {
    "zero.png": "not an image Pillow can read",
    "truncated.png": "cannot decode image",
    "text.png": "not an image Pillow can read",
    "huge.png": "image too large",
    "dir.png": "dir.png",  # retrieve: "is a folder but b.png is not"; intervene: "is a directory"
    "nope.png": "file not found",
    "fifo.png": "not a regular file",  # a named pipe: reading it would block for ever
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
    # a run folder reads and writes only inside itself: the pointer is a name, not a path
    "run-escape": "is not a checkpoint name",
    "run-absolute": "is not a checkpoint name",
    "run-symlink": "leads outside the run folder",
    # user-edited meta.json: wrong types, huge and non-finite numbers, absurd nesting
    "run-finished-text": "finished must be true or false, got 'no'",
    "run-step-huge": "step must be a whole number from 0 to 2^53",
    "run-step-nan": "step must be a whole number from 0 to 2^53, got None",
    "run-meta-deep": "damaged checkpoint description",
}
CONFIG_ERRORS = {
    "unknown-key.toml": "unknown config key 'train.stage1_stepz'",
    "wrong-type.toml": "train.stage1_steps",
    "binary.toml": "binary.toml",
    "config-dir.toml": "cannot read config file",
    "nope.toml": "config file not found",
    "nan-lr.toml": "config key 'train.lr' must be a finite number, got nan",
    "deep.toml": "nested too deeply",
    "channels.toml": "data.channels does not apply to dataset 'shapes3d'",
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
    (folder / "left2").mkdir()  # left2/extra.png has no partner in right
    shutil.copy(a, folder / "left2" / "p0.png")
    shutil.copy(a, folder / "left2" / "extra.png")
    os.mkfifo(folder / "fifo.png")


def bad_shape(run: Path) -> None:
    """meta.json's image shape with a string in it (a hand-edited checkpoint)."""
    meta_path = latest_checkpoint(run).path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model_args"]["image_shape"] = [3, "x", 16]
    meta_path.write_text(json.dumps(meta))


def _edit_meta(run: Path, **fields: object) -> None:
    meta_path = latest_checkpoint(run).path / "meta.json"
    meta_path.write_text(json.dumps(json.loads(meta_path.read_text()) | fields))


def _point(run: Path, name: str) -> None:
    (run / "checkpoints" / "latest").write_text(name)


def pointer_escape(run: Path) -> None:
    """``latest`` leads into a sibling run (which a resume would then write into)."""
    step = latest_checkpoint(run).path.name
    _point(run, f"../../run-victim/checkpoints/{step}")


def pointer_absolute(run: Path) -> None:
    _point(run, str(latest_checkpoint(run.parent / "run-victim").path))


def pointer_symlink(run: Path) -> None:
    """A checkpoint-shaped name that is a symlink into another run."""
    (run / "checkpoints" / "step-0999999").symlink_to(
        latest_checkpoint(run.parent / "run-victim").path, target_is_directory=True
    )
    _point(run, "step-0999999")


def step_nan(run: Path) -> None:
    meta_path = latest_checkpoint(run).path / "meta.json"
    meta_path.write_text(re.sub(r'"step": \d+', '"step": NaN', meta_path.read_text(), count=1))


def truncated_cache(run: Path) -> None:
    cache = run / "cache" / "stage2_latents.safetensors"
    cache.write_bytes(cache.read_bytes()[:100])


def meta_deep(run: Path) -> None:
    (latest_checkpoint(run).path / "meta.json").write_text("[" * 100_000)


def _runs(folder: Path, run: Path) -> None:
    """Copies of the trained run with tampered weights, another config or a broken shape;
    an empty folder and a file where a run belongs; metrics.json files for the report."""
    shutil.copytree(run, folder / "run-victim", ignore=shutil.ignore_patterns("eval"))
    tampers = [
        ("run-tampered", tamper_header),
        ("run-other", other_config),
        ("run-shape", bad_shape),
        ("run-escape", pointer_escape),
        ("run-absolute", pointer_absolute),
        ("run-symlink", pointer_symlink),
        ("run-finished-text", lambda r: _edit_meta(r, finished="no")),
        ("run-step-huge", lambda r: _edit_meta(r, step=10**30)),
        ("run-step-nan", step_nan),
        ("run-meta-deep", meta_deep),
        ("run-cache", truncated_cache),
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
    for name, section, values in [
        ("nan-lr.toml", "train", {"lr": float("nan")}),
        ("channels.toml", "data", {"channels": 3}),  # shapes3d has 3 channels, always
    ]:
        data = {**smoke, section: {**smoke.get(section, {}), **values}}
        if section == "data":
            data["data"]["dataset"] = "shapes3d"
        (folder / name).write_text(tomli_w.dumps(data))
    (folder / "deep.toml").write_text("a = " + "[" * 100_000)
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
    Case(retrieve("{h}/left2", "{h}/right"), "1 image(s) have no partner"),
    *(Case(retrieve(f"{{h}}/{n}") + " --json", check=retrieved(t)) for n, t in UNUSUAL.items()),
    *(Case(retrieve("{h}/a.png", run=f"{{h}}/{r}"), error) for r, error in RUN_ERRORS.items()),
    Case(retrieve("{h}/a.png") + " --top-k 0", "--top-k: must be from 1 to 1,000, got 0"),
    *(Case(intervene(f"{{h}}/{name}"), error) for name, error in IMAGE_ERRORS.items()),
    *(Case(intervene(f"{{h}}/{name}"), check=intervened) for name in UNUSUAL),
    *(Case(intervene(run=f"{{h}}/{r}"), error) for r, error in RUN_ERRORS.items()),
    Case(intervene(out="{h}/dir.png"), "dir.png is a folder"),
    Case(intervene(out="{h}/file.txt/cf.png"), "file.txt"),
    Case(intervene() + " --steps many", "argument --steps: wants a whole number, got 'many'"),
    Case(intervene() + " --action size+", "unknown action 'size+'"),
    Case(intervene() + " --steps 1000000000", "--steps: must be from 1 to 100, got 1000000000"),
    Case(intervene() + " --steps 0", "--steps: must be from 1 to 100, got 0"),
    Case(intervene() + " --scale 100000", "--scale: must be from 1 to 16"),
    Case("data preview --dataset toy --pairs 999999999 --out {out}/p.png", "--pairs: must be"),
    Case("data export --dataset toy --out {out}/x --train 1e12", "--train: wants a whole number"),
    Case("data export --dataset toy --out {out}/x --train 99999999999", "--train: must be"),
    *(Case(f"evaluate {{h}}/{r} --fast", error) for r, error in RUN_ERRORS.items()),
    Case("evaluate {run} --fast --out {h}/file.txt", "is a file"),
    Case("evaluate {h}/run-cache --fast", "damaged stage-2 cache"),
    Case("evaluate {run} --fast --split valid", "unknown split 'valid'"),
    Case("evaluate {run} --fast --pairs 0", "--pairs: must be from 1 to 1,000,000, got 0"),
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
    # every value is checked when the config is read, before a run folder or a step exists
    Case(TRAIN + "--set train.lr=-0.001", "config key 'train.lr' must be > 0, got -0.001"),
    Case(TRAIN + "--set train.stage2_lr=inf", "'train.stage2_lr' must be a finite number"),
    Case(TRAIN + "--set train.batch_size=0", "train.batch_size must be >= 1"),
    Case(TRAIN + "--set train.cache_pairs=99999999999999", "'train.cache_pairs' is out of range"),
    Case(TRAIN + "--set model.autoencoder.widths=[]", "'model.autoencoder.widths' must not be"),
    Case(TRAIN + "--set model.quantizer.codebook_size=0", "codebook_size' must be > 0"),
    Case(TRAIN + "--set model.quantizer.decay=2", "'model.quantizer.decay' must be in [0, 1]"),
    Case(TRAIN + '--set name="a\u0007b"', "'name' contains control characters"),
    Case(TRAIN + "--set a=" + "[" * 5000, "nested too deeply"),
    Case(TRAIN + "--dataset sprites --set data.stride=2", "data.stride does not apply"),
    Case(TRAIN + "--stage 3", "argument --stage: invalid choice"),
    *(Case(f"train --resume {{h}}/{r}", error) for r, error in RUN_ERRORS.items()),
    Case("ablate --size enormous --dry-run", "unknown size 'enormous'"),
    Case("ablate --rhos abc --dry-run", "argument --rhos: wants a number, got 'abc'"),
    Case("ablate --rhos 0.5 --dry-run", "argument --rhos: must be from 1 to 1,000,000.0, got 0.5"),
    Case("ablate --set train.stage1_stepz=1 --dry-run", "unknown config key 'train.stage1_stepz'"),
    Case("ablate --set train.stage1_steps=many --dry-run", "train.stage1_steps"),
    Case("ablate --set oops --dry-run", "oops"),
    Case("ablate --out {h}/file.txt --dry-run", "file.txt is a file"),
    Case("ablate --jobs two --dry-run", "argument --jobs: wants a whole number, got 'two'"),
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

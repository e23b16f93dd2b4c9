"""Bad checkpoint files: every one a CheckpointError naming the file and the problem (an ``error:``
line from ``--resume``), sizes bounded before allocating; stale temporary files cleaned up."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import zipfile

import numpy as np
import pytest

from gpulayers import models, nn, optim, train
from gpulayers.checkpoint import CheckpointError

TINY = ["--epochs", "1", "--limit", "64", "--width", "2", "--no-progress", "--device", "cpu"]


def small_parts():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = optim.CosineAnnealingLR(opt, T_max=3)
    return model, opt, sched


@pytest.fixture
def good(tmp_path):
    model, opt, sched = small_parts()
    path = tmp_path / "good.npz"
    train.save_checkpoint(path, model, opt, sched, epoch=1, history=[{"epoch": 1, "lr": 0.1}])
    return path


def rewrite(src, dst, meta_edit=None, arrays_edit=None):
    """Copy the checkpoint ``src`` to ``dst`` with its meta JSON and/or arrays edited."""
    with np.load(src, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    if meta_edit is not None:
        meta = json.loads(arrays["meta"].tobytes())
        meta = meta_edit(meta)
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    if arrays_edit is not None:
        arrays_edit(arrays)
    np.savez(dst, **arrays)
    return dst


def npy_bytes(header: dict, payload: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + payload


def zip_with(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    return path


def with_meta(meta_value):
    return lambda meta: meta_value


def set_key(key, value):
    def edit(meta):
        meta[key] = value
        return meta

    return edit


def make_case(name, good, tmp_path):
    """The bad file of case ``name`` and a fragment of the expected message."""
    bad = tmp_path / f"{name}.npz"
    if name == "empty":
        bad.write_bytes(b"")
        return bad, "the file is empty"
    if name == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        return bad, "truncated or damaged"
    if name == "npy":
        with open(bad, "wb") as f:
            np.save(f, np.zeros(3))
        return bad, "single NumPy array (.npy)"
    if name == "random-bytes":
        bad.write_bytes(random.Random(5).randbytes(4096))
        return bad, "is not a checkpoint: a .npz (zip) file starts with 'PK'"
    if name == "meta-list":
        return rewrite(good, bad, with_meta([1, 2, 3])), "'meta' must be a JSON object, got a JSON list"
    if name == "meta-not-json":
        return rewrite(good, bad, arrays_edit=lambda a: a.update(meta=np.frombuffer(b"{nope", np.uint8))), "not valid"
    if name == "meta-deep":
        deep = np.frombuffer(b"[" * 100000 + b"]" * 100000, np.uint8)
        return rewrite(good, bad, arrays_edit=lambda a: a.update(meta=deep)), "'meta'"
    if name == "no-meta":
        return rewrite(good, bad, arrays_edit=lambda a: a.pop("meta")), "no 'meta' entry"
    if name == "rng-garbage":
        edit = set_key("rng", {"seed": 0, "cpu": {"bit_generator": "PCG64", "state": "garbage"}})
        return rewrite(good, bad, edit), "random-generator state is not a PCG64 state"
    if name == "rng-list":
        return rewrite(good, bad, set_key("rng", [1, 2])), "random-generator state must be an object"
    if name.startswith("epoch="):
        value = json.loads(name[len("epoch=") :])
        return rewrite(good, bad, set_key("epoch", value)), "epoch must be an integer in 0..1000000"
    if name == "history-longer":
        return rewrite(good, bad, set_key("history", [{}] * 5)), "epoch 1 but the history holds 5 epochs"
    if name == "optimizer-missing-array":
        edit = set_key("optimizer", {"__array__": "optimizer/999"})
        return rewrite(good, bad, edit), "the optimizer state is malformed (KeyError"
    if name == "loader-garbage":
        return rewrite(good, bad, set_key("loader", {"seed": "x"})), "loader state must map names to integers"
    if name == "huge-header":
        header = {"descr": "<f4", "fortran_order": False, "shape": (2**50,)}
        meta = rewrite(good, tmp_path / "tmp.npz")
        with np.load(meta) as f:
            meta_raw = f["meta"]
        members = {"model/w.npy": npy_bytes(header, b"\0" * 16), "meta.npy": npy_bytes_of(meta_raw)}
        return zip_with(bad, members), "declares shape (1125899906842624,) of float32"
    if name == "object-dtype":
        header = {"descr": "|O", "fortran_order": False, "shape": (1,)}
        return zip_with(bad, {"model/w.npy": npy_bytes(header, b"\x80\x04N.")}), "holds object data"
    if name == "not-npy-member":
        return zip_with(bad, {"evil.txt": b"hello"}), "holds 'evil.txt', which is not a NumPy array"
    if name == "folder":
        bad.mkdir()
        return bad, "is a folder"
    raise KeyError(name)


def npy_bytes_of(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


CASES = [
    "empty",
    "truncated",
    "npy",
    "random-bytes",
    "meta-list",
    "meta-not-json",
    "meta-deep",
    "no-meta",
    "rng-garbage",
    "rng-list",
    'epoch="abc"',
    "epoch=-3",
    "epoch=1000000000",
    "epoch=true",
    "epoch=1.5",
    "history-longer",
    "optimizer-missing-array",
    "loader-garbage",
    "huge-header",
    "object-dtype",
    "not-npy-member",
    "folder",
]


@pytest.mark.parametrize("name", CASES)
def test_bad_checkpoint_is_a_clear_error(name, good, tmp_path):
    bad, message = make_case(name, good, tmp_path)
    model, opt, sched = small_parts()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        train.load_checkpoint(bad, model, opt, sched)
    assert str(bad) in str(info.value) and message in str(info.value)
    assert "pickled" not in str(info.value)
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in before.items())  # nothing restored


@pytest.mark.parametrize("name", CASES)
def test_bad_checkpoint_on_the_command_line(name, good, tmp_path, capsys):
    bad, message = make_case(name, good, tmp_path)
    rc = train.main([*TINY, "--checkpoint", str(bad), "--resume"])
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err and "epoch 1/" not in out
    assert f"error: cannot resume from {bad}: " in err or f"--checkpoint {bad}: is a folder" in err
    assert message in err


@pytest.mark.parametrize("cut", sorted(random.Random(1).sample(range(1, 2000), 40)))
def test_every_truncation_is_a_clear_error(cut, tmp_path):
    model = models.small_cnn(1, 10, 8, width=2)
    path = tmp_path / "ck.npz"
    train.save_checkpoint(path, model, epoch=0)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * cut // 2000])
    with pytest.raises(CheckpointError, match="load_checkpoint: .*ck.npz: "):
        train.load_checkpoint(path, models.small_cnn(1, 10, 8, width=2))


@pytest.mark.parametrize("seed", range(30))
def test_random_corruption_is_a_clean_error_or_harmless(seed, tmp_path):
    """Seeded random byte edits of a good checkpoint: a CheckpointError, a mismatch error from
    load_state_dict, or (for an edit in a byte nothing reads) exactly the original state."""
    rng = random.Random(seed)
    model, opt, sched = small_parts()
    path = tmp_path / "ck.npz"
    train.save_checkpoint(path, model, opt, sched, epoch=1, history=[{"epoch": 1}])
    raw = bytearray(path.read_bytes())
    for _ in range(rng.randint(1, 8)):
        kind = rng.choice(["flip", "cut", "insert"])
        at = rng.randrange(len(raw))
        if kind == "flip":
            raw[at] ^= 1 << rng.randrange(8)
        elif kind == "cut":
            del raw[at : at + rng.randint(1, 64)]
        else:
            raw[at:at] = rng.randbytes(rng.randint(1, 64))
    path.write_bytes(bytes(raw))
    fresh, fresh_opt, fresh_sched = small_parts()
    try:
        train.load_checkpoint(path, fresh, fresh_opt, fresh_sched, restore_rng=False)
    except (CheckpointError, RuntimeError) as exc:
        assert str(path) in str(exc) or "load_state_dict" in str(exc)
        return
    for k, v in model.state_dict().items():
        assert np.array_equal(v, fresh.state_dict()[k])


def test_stale_temporary_files_are_removed_by_the_next_save(tmp_path):
    path = tmp_path / "ck.npz"
    stale = [tmp_path / ".ck.npz.abc123.tmp", tmp_path / ".ck.npz.zz9.tmp"]
    for p in stale:
        p.write_bytes(b"PK\x03\x04 half a checkpoint")
    other = tmp_path / ".other.npz.abc.tmp"  # another checkpoint's: not ours to remove
    other.write_bytes(b"x")
    train.save_checkpoint(path, nn.Linear(2, 2), epoch=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.npz.abc.tmp", "ck.npz"]
    assert train.load_checkpoint(path, restore_rng=False)["epoch"] == 1


def test_ctrl_c_during_a_save_waits_for_the_complete_file(tmp_path, monkeypatch):
    """A Ctrl-C (SIGINT) that arrives while the checkpoint is written takes effect once the new file
    is complete and renamed into place: KeyboardInterrupt then, no temporary file left, no zip file
    closed halfway (which raised ValueError instead and printed a traceback when collected)."""
    path = tmp_path / "ck.npz"
    train.save_checkpoint(path, nn.Linear(2, 2), epoch=1)
    real_savez = np.savez
    calls = []

    def savez_hit_by_ctrl_c(file, **arrays):
        os.kill(os.getpid(), signal.SIGINT)  # delivered to this (main) thread at once
        calls.append("signalled")
        real_savez(file, **arrays)

    monkeypatch.setattr(np, "savez", savez_hit_by_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(path, nn.Linear(2, 2), epoch=2)
    assert calls == ["signalled"]
    assert train.load_checkpoint(path, restore_rng=False)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_load_does_not_allocate_what_the_header_claims(good, tmp_path):
    """A member whose zip entry claims far more bytes than the file holds is refused from the sizes."""
    bad = tmp_path / "bomb.npz"
    header = {"descr": "<f8", "fortran_order": False, "shape": (2**40,)}
    zip_with(bad, {"model/w.npy": npy_bytes(header, b"")})
    with pytest.raises(CheckpointError, match="declares shape"):
        train.load_checkpoint(bad)

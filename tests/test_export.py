"""Export to safetensors: a checkpoint's weights load into the PyTorch twin with load_state_dict
(strict) and give the same logits."""

from __future__ import annotations

import numpy as np
import pytest

from gpulayers import export, models, train

torch = pytest.importorskip("torch")
st_torch = pytest.importorskip("safetensors.torch")


def test_checkpoint_to_safetensors_loads_into_pytorch(tmp_path, capsys):
    ck, out = tmp_path / "ck.npz", tmp_path / "w" / "model.safetensors"
    argv = ["--epochs", "1", "--limit", "64", "--width", "4", "--no-progress", "--device", "cpu"]
    assert train.main([*argv, "--checkpoint", str(ck)]) == 0
    assert export.main([str(ck), str(out)]) == 0
    assert "wrote 16 tensors" in capsys.readouterr().out  # 2 convs, 2 BN (5 each), 2 linears (2 each)
    ours = models.small_cnn(1, 10, 8, width=4)
    train.load_checkpoint(ck, ours, restore_rng=False)
    twin = models.small_cnn(1, 10, 8, width=4, layers=torch.nn)
    missing, unexpected = twin.load_state_dict(st_torch.load_file(str(out)), strict=True)
    assert not missing and not unexpected
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    ours.eval()
    twin.eval()
    with torch.no_grad():
        ref = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(x), ref, rtol=1e-4, atol=1e-5)


def test_save_safetensors_from_a_module(tmp_path):
    model = models.small_cnn(1, 10, 8, width=2)
    export.save_safetensors(model, tmp_path / "m.safetensors")
    loaded = st_torch.load_file(str(tmp_path / "m.safetensors"))
    assert sorted(loaded) == sorted(model.state_dict())
    for k, v in model.state_dict().items():
        assert np.array_equal(loaded[k].numpy(), v)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


@pytest.mark.parametrize("content", [b"", b"garbage bytes", None])
def test_export_bad_input_is_an_error_line(content, tmp_path, capsys):
    src = tmp_path / "ck.npz"
    if content is not None:
        src.write_bytes(content)
    rc = export.main([str(src), str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and str(src) in err and "Traceback" not in err
    assert not (tmp_path / "out.safetensors").exists()

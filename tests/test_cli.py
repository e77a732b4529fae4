"""The command line, as a user runs it."""

import numpy as np
import PIL.Image
import pytest

from meissonic.interfaces.cli import main
from meissonic.testing import build_tiny_pipeline_folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(build_tiny_pipeline_folder(tmp_path_factory.mktemp("cli") / "model"))


def test_generate_writes_pngs(model, tmp_path, capsys):
    out = tmp_path / "img.png"
    code = main(["generate", "a red circle", "a blue square", "--model", model, "-o", str(out), "--steps", "3",
                 "--height", "32", "--width", "48", "--dtype", "fp32", "--seed", "3"])
    assert code == 0
    paths = [tmp_path / "img-0.png", tmp_path / "img-1.png"]
    assert capsys.readouterr().out.split() == [str(p) for p in paths]
    assert all(PIL.Image.open(p).size == (48, 32) for p in paths)


def test_bad_batch_size_is_refused_before_anything_is_written(model, tmp_path, capsys):
    out = tmp_path / "img.png"
    assert main(["generate", "x", "--model", model, "-o", str(out), "--steps", "2", "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    assert not out.exists()


def test_same_seed_same_file(model, tmp_path):
    for name in ("a.png", "b.png"):
        main(["generate", "x", "--model", model, "-o", str(tmp_path / name), "--steps", "3", "--dtype", "fp32"])
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_existing_output_is_never_replaced_silently(model, tmp_path, capsys):
    out = tmp_path / "keep.png"
    out.write_bytes(b"precious")
    assert main(["generate", "x", "--model", model, "-o", str(out), "--steps", "2"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main(["generate", "x", "--model", model, "-o", str(out), "--steps", "2", "--overwrite"]) == 0
    assert PIL.Image.open(out).format == "PNG"


@pytest.mark.parametrize("args,message", [
    (["--height", "36"], "not a multiple of 8"),
    (["--steps", "0"], "num_inference_steps"),
    (["--dtype", "fp16", "--device", "cpu"], "fp16 on a CPU"),
])
def test_errors_are_one_line(model, tmp_path, capsys, args, message):
    code = main(["generate", "x", "--model", model, "-o", str(tmp_path / "o.png"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and err.startswith("meissonic generate: error:")


def test_missing_model_folder(tmp_path, capsys):
    assert main(["generate", "x", "--model", str(tmp_path / "none"), "-o", str(tmp_path / "o.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_no_model_and_no_embedded_model_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from meissonic.interfaces.commands import common

    monkeypatch.setattr(common, "EMBEDDED_MODEL", tmp_path / "assets" / "default_model")
    assert main(["generate", "x", "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "no embedded default model" in err and "--model FOLDER" in err
    assert not (tmp_path / "o.png").exists()


def test_edit_modes(model, tmp_path):
    source = tmp_path / "in.png"
    PIL.Image.new("RGB", (32, 32), (10, 200, 10)).save(source)
    mask = tmp_path / "mask.png"
    PIL.Image.new("L", (32, 32), 255).save(mask)
    common = ["--model", model, "--steps", "2", "--dtype", "fp32"]
    assert main(["edit", "x", "--image", str(source), "-o", str(tmp_path / "a.png"), *common]) == 0
    assert main(["edit", "x", "--image", str(source), "--mask", str(mask), "-o", str(tmp_path / "b.png"),
                 *common]) == 0
    assert main(["edit", "x", "--image", str(source), "--mode", "outpaint", "--extend", "8", "8", "0", "8",
                 "-o", str(tmp_path / "c.png"), *common]) == 0
    assert PIL.Image.open(tmp_path / "c.png").size == (48, 40)


def test_edit_bad_input(model, tmp_path, capsys):
    source = tmp_path / "in.png"
    PIL.Image.new("RGB", (32, 32)).save(source)
    small = tmp_path / "small.png"
    PIL.Image.new("L", (16, 16)).save(small)
    assert main(["edit", "x", "--image", str(source), "--mask", str(small), "--model", model,
                 "-o", str(tmp_path / "o.png")]) == 2
    assert "mask size" in capsys.readouterr().err
    assert main(["edit", "x", "--image", str(tmp_path / "no.png"), "--model", model]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["edit", "x", "--image", str(source), "--mode", "outpaint", "--model", model]) == 2
    assert "--extend" in capsys.readouterr().err


def test_default_output_name_never_replaces(model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out.png").write_bytes(b"mine")
    assert main(["generate", "x", "--model", model, "--steps", "2", "--dtype", "fp32"]) == 0
    assert capsys.readouterr().out.strip() == "out-1.png"
    assert (tmp_path / "out.png").read_bytes() == b"mine"
    assert main(["generate", "x", "--model", model, "--steps", "2", "--dtype", "fp32", "--num-images", "2"]) == 0
    assert capsys.readouterr().out.split() == ["out-1-0.png", "out-1-1.png"]  # out-1.png is left alone


def test_grid_has_a_row_per_prompt_and_a_column_per_seed(model, tmp_path, capsys):
    out = tmp_path / "grid.png"
    common = ["--model", model, "--steps", "2", "--dtype", "fp32", "--height", "32", "--width", "32"]
    assert main(["generate", "a red circle", "a blue square", "--num-images", "3", "--seed", "5", "--grid",
                 "-o", str(out), *common]) == 0
    grid = PIL.Image.open(out)
    assert grid.width == 3 * 32 and grid.height > 2 * 32
    # The cell of prompt 2, seed 6 is the image a plain call makes for that prompt and seed.
    assert main(["generate", "a blue square", "--seed", "6", "-o", str(tmp_path / "one.png"), *common]) == 0
    single = PIL.Image.open(tmp_path / "one.png")
    header = (grid.height - 2 * (32 + 14)) // 2  # both rows have one-line headers of equal height
    cell = grid.crop((32, header + 32 + 14 + header, 64, header + 32 + 14 + header + 32))
    same = np.mean(np.asarray(cell) == np.asarray(single))
    assert same > 0.9, same  # batched float math may flip a rare near-tie draw; another seed gives ~0.25


def test_output_has_the_usual_permissions(model, tmp_path):
    import os
    import stat

    out = tmp_path / "perm.png"
    assert main(["generate", "x", "--model", model, "-o", str(out), "--steps", "2", "--dtype", "fp32"]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask

"""`train --data`: every dataset layout, made by `export-data`, trains the tiny preset into a model
folder `generate` loads; bad samples are skipped and counted; bad inputs are refused by field,
with nothing written. Also `train --config` and the run record."""

import io
import json
import shutil
import tarfile

import pytest
from PIL import Image

from ediff_core.tools.cli import main


def _export(tmp_path, fmt, n=12, per_shard=4):
    out = tmp_path / fmt
    assert main(["export-data", "--out", str(out), "--n", str(n), "--format", fmt, "--per-shard", str(per_shard)]) == 0
    if fmt == "imagefolder":
        return str(out)
    shards = sorted(out.glob("*.tar"))
    return str(out / f"shapes-{{000000..{len(shards) - 1:06d}}}.tar")


def _record(run_dir, job="base/shared"):
    return json.loads((run_dir / job / "training.json").read_text())


@pytest.mark.parametrize("fmt", ["imagefolder", "webdataset"])
def test_each_format_trains_into_a_model_folder_generate_loads(fmt, tmp_path, tiny_model, capsys):
    spec = _export(tmp_path, fmt)
    run_dir = tmp_path / "run"
    # Frozen encoders named by path (--t5/--clip), as a user names google/t5-v1_1-xxl and a CLIP.
    args = ["train", "--preset", "tiny", "--stage", "base", "--out", str(run_dir), "--data", spec,
            "--t5", str(tiny_model / "t5"), "--clip", str(tiny_model / "clip"), "--base-steps", "3", "--threads", "1"]
    assert main(args + (["--data-workers", "2"] if fmt == "webdataset" else [])) == 0
    rec = _record(run_dir)
    assert rec["step"] == 3 and rec["data"]["kind"] == fmt and rec["data"]["skipped"]["count"] == 0
    assert rec["data"].get("samples", rec["data"].get("shards")) == (12 if fmt == "imagefolder" else 3)
    index = json.loads((run_dir / "model_index.json").read_text())
    assert index["encoders"]["t5"]["path"] == str((tiny_model / "t5").resolve())
    run = json.loads((run_dir / "_train" / "run.json").read_text())
    assert run["world_size"] == 1 and run["global_batch"] == 4 and run["data"]["spec"] == spec
    assert len(run["encoders"]["fingerprint"]) == 16 and run["git_commit"] and run["train_config"]["base_steps"] == 3
    out_png = tmp_path / "g.png"
    capsys.readouterr()
    assert main(["generate", "--model", str(run_dir), "--prompt", "a red circle", "--steps", "2", "--out", str(out_png), "--device", "cpu"]) == 0
    assert Image.open(out_png).size == (32, 32)


def _png(size=(64, 64), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def test_bad_imagefolder_samples_are_skipped_counted_and_reported(tmp_path, encoders_run, capsys):
    data = tmp_path / "folder"
    _export(tmp_path, "imagefolder", n=8)
    shutil.move(str(tmp_path / "imagefolder"), data)
    (data / "images" / "000001.png").write_bytes(_png()[:60])  # truncated
    (data / "images" / "000002.png").write_bytes(b"not an image")
    (data / "images" / "small.png").write_bytes(_png((16, 16)))
    items = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    items[4]["text"] = "   "  # an empty caption
    del items[5]["text"]  # no caption at all
    items += [{"file_name": "images/small.png", "text": "a tiny picture"},  # under the minimum side
              {"file_name": "images/missing.png", "text": "gone"}]
    lines = [json.dumps(it) for it in items] + ["{not json"]
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    logs = []
    from ediff_core.tools.training import run

    run("tiny", "base", encoders_run, data=str(data), overrides={"base_steps": 6, "threads": 1}, log=logs.append)
    skipped = _record(encoders_run)["data"]["skipped"]
    reasons = {s["key"]: s["reason"] for s in skipped["first"]}
    assert skipped["count"] == 7, skipped
    assert "unreadable image" in reasons["images/000001.png"] and "unreadable image" in reasons["images/000002.png"]
    assert reasons["images/000004.png"] == reasons["images/000005.png"] == "missing or empty caption"
    assert "under the minimum side 64" in reasons["images/small.png"] and reasons["images/missing.png"] == "image file missing"
    assert any(k.startswith("metadata.jsonl:") for k in reasons)
    assert any("skipped 7 bad samples" in m for m in logs)
    assert json.loads((encoders_run / "_train" / "run.json").read_text())["data"]["skipped"]["count"] == 7


def test_bad_webdataset_samples_are_skipped_and_counted(tmp_path, encoders_run):
    shard = tmp_path / "bad.tar"
    good = [(f"{i:04d}", _png(color=(10 * i, 100, 50)), json.dumps({"text": [f"a red circle {i}", "a red circle"]}).encode()) for i in range(6)]
    with tarfile.open(shard, "w") as tar:
        def add(name, blob):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))

        for key, png, meta in good:
            add(f"{key}.png", png)
            add(f"{key}.json", meta)
        add("nocap.png", _png())  # no caption
        add("empty.png", _png())
        add("empty.txt", b"  \n")
        add("broken.jpg", b"\xff\xd8\xff garbage")
        add("broken.txt", b"a broken picture")
    from ediff_core.tools.training import run

    run("tiny", "base", encoders_run, data=f"webdataset:{shard}", overrides={"base_steps": 4, "threads": 1}, log=lambda m: None)
    skipped = _record(encoders_run)["data"]["skipped"]
    reasons = {s["key"]: s["reason"] for s in skipped["first"]}
    assert skipped["count"] == 3 and set(reasons) == {"nocap", "empty", "broken"}, skipped
    assert "unreadable image" in reasons["broken"] and reasons["empty"] == "missing or empty caption"


def test_exif_orientation_rgb_and_centre_crop(tmp_path):
    from ediff_core.data.transforms import centre_square, decode_image

    img = Image.new("RGB", (80, 40), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 40, 40))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: displayed turned 90° clockwise
    path = tmp_path / "rot.jpg"
    img.save(path, "JPEG", exif=exif, quality=95)
    shown = decode_image(path, "rot", min_side=8)
    assert shown.size == (40, 80) and shown.mode == "RGB"
    assert shown.getpixel((20, 10))[2] > 200  # the blue half is on top once the orientation is applied
    square = centre_square(shown, 16)
    assert square.size == (16, 16)
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(rgba)
    assert decode_image(rgba, "a", 8).getpixel((0, 0)) == (255, 255, 255)  # transparency over white


def test_a_dataset_with_no_usable_sample_is_a_clear_error(tmp_path, encoders_run, capsys):
    data = tmp_path / "folder"
    (data / "images").mkdir(parents=True)
    for i in range(3):
        (data / "images" / f"{i}.png").write_bytes(b"junk")
    (data / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"images/{i}.png", "text": "x"}) + "\n" for i in range(3)))
    args = ["train", "--preset", "tiny", "--stage", "base", "--out", str(encoders_run), "--data", str(data)]
    capsys.readouterr()
    assert main(args) == 2
    assert f"data: no usable sample in {data / 'images'}: all 3 images failed" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing folder", "empty metadata", "no shard", "unknown encoder", "grounding without masks"])
def test_bad_inputs_name_the_field_and_write_nothing(case, tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    args = ["train", "--preset", "tiny", "--stage", "base", "--out", str(out)]
    if case == "missing folder":
        args += ["--data", str(tmp_path / "nowhere")]
        says = f"data: no folder at {tmp_path / 'nowhere'}"
    elif case == "empty metadata":
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "metadata.jsonl").write_text("\n")
        args += ["--data", str(tmp_path / "d")]
        says = "data: " + str(tmp_path / "d" / "metadata.jsonl") + " is empty"
    elif case == "no shard":
        args += ["--data", str(tmp_path / "s-{000000..000009}.tar")]
        says = "data: the shard pattern " + str(tmp_path / "s-{000000..000009}.tar") + " matches no file"
    elif case == "grounding without masks":
        args += ["--data", _export(tmp_path, "imagefolder", n=4), "--grounding", "0.1"]
        says = "grounding: the token-grounding loss needs each object's mask, which only Shapes World provides"
    else:
        args += ["--data", _export(tmp_path, "imagefolder", n=4), "--t5", "nobody/no-such-t5-encoder", "--clip", str(tiny_model / "clip")]
        says = "t5: 'nobody/no-such-t5-encoder' is not a local folder and could not be loaded as a Hugging Face Hub id: offline mode is on"
    capsys.readouterr()
    assert main(args) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()


def test_config_file_holds_the_command_line_and_flags_win(tmp_path, encoders_run, capsys):
    spec = _export(tmp_path, "imagefolder", n=8)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"preset: tiny\nstage: base\nout: {encoders_run}\ndata: {spec}\nbase_steps: 2\nwarmup: 7\nthreads: 1\n"
                   "dropout: {clip_text: 0.5}\nseed: 3\n")
    assert main(["train", "--config", str(cfg), "--base-steps", "3", "--threads", "1"]) == 0
    rec = _record(encoders_run)
    assert rec["step"] == 3 and rec["config"]["warmup"] == 7 and rec["config"]["seed"] == 3 and rec["config"]["dropout"]["clip_text"] == 0.5
    resolved = encoders_run / "_train" / "config.yaml"
    import yaml

    again = yaml.safe_load(resolved.read_text())
    assert again["data"] == spec and again["warmup"] == 7 and again["base_steps"] == 3
    toml = tmp_path / "run.toml"
    toml.write_text(f'preset = "tiny"\nstage = "base"\nout = "{tmp_path / "t"}"\ndata = "{spec}"\nbase_steps = 1\nthreads = 1\n'
                    f't5 = "{encoders_run / "t5"}"\nclip = "{encoders_run / "clip"}"\n')
    assert main(["train", "--config", str(toml)]) == 0 and _record(tmp_path / "t")["step"] == 1
    (tmp_path / "bad.yaml").write_text("preset: tiny\nbatchsize: 4\n")
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "never")]) == 2
    assert "config: unknown setting(s) ['batchsize']" in capsys.readouterr().err and not (tmp_path / "never").exists()

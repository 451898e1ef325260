from pathlib import Path

import pytest
import torch

from srpie_cli import SrpieError
from srpie_cli.model import SRPIEConfig
from srpie_cli.weights import SHIPPED, load_model, read_weights, resolve, save_weights
from tests.test_model import perturbed

TINY = SRPIEConfig(width=8, t=1, pe_widths=(4, 4, 4), du_width=6)


def test_checkpoint_round_trip_needs_no_side_file(tmp_path):
    model = perturbed(TINY)
    path = tmp_path / "m.pt"
    save_weights(path, model, {"note": "test", "scores": {"val": {"psnr": 30.0}}})
    loaded, meta = load_model(path)
    assert loaded.cfg == TINY
    assert meta["note"] == "test" and meta["untrained"] is False
    x = torch.rand(1, 3, 13, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file
    assert path.stat().st_mode & 0o044 == 0o044  # readable by group and others (umask 022)


def test_a_weights_file_holding_a_pickled_object_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "srpie-weights-1", "config": {}, "state_dict": {}, "meta": Payload()}, path)
    with pytest.raises(SrpieError, match="pickled Python objects"):
        load_model(path)


@pytest.mark.parametrize("content", [b"", b"not a weights file", b"PK\x03\x04broken zip"])
def test_garbage_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(SrpieError, match="bad.pt"):
        read_weights(path)


def test_a_plain_dict_that_is_not_ours_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(SrpieError, match="not an srpie weights file"):
        load_model(path)


def test_weights_that_do_not_fit_their_config_are_refused(tmp_path):
    path = tmp_path / "m.pt"
    save_weights(path, perturbed(TINY))
    blob = torch.load(path, weights_only=True)
    blob["config"]["width"] = 16
    torch.save(blob, path)
    with pytest.raises(SrpieError, match="do not fit"):
        load_model(path)


def test_unknown_names_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(SrpieError, match="no such model"):
        resolve("srpie-x9")
    with pytest.raises(SrpieError, match="no such model"):
        resolve(tmp_path / "missing.pt")


def test_every_shipped_name_loads_trained_or_flagged_untrained():
    for name in SHIPPED:
        model, meta = load_model(name)
        assert model.scale == 2
        assert isinstance(meta["untrained"], bool)
        if not meta["untrained"]:
            assert meta.get("scores"), f"{name} ships without measured scores"


def test_the_defaults_agree():
    import inspect

    from srpie_cli.cli import enhance, preview
    from srpie_cli.inference import Settings
    from srpie_cli.weights import DEFAULT_MODEL

    assert DEFAULT_MODEL in SHIPPED and Settings(device="cuda").model == DEFAULT_MODEL
    for command in (enhance, preview):  # None: the device's default (inference.default_model)
        assert inspect.signature(command).parameters["model"].default is None


def test_the_model_card_and_readme_quote_the_scores_each_shipped_file_carries():
    # the figures in the docs are the measured ones stored in the files: retraining a model
    # without updating its card (or editing a number by hand) fails here
    root = Path(__file__).resolve().parents[1]
    card = (root / "weights" / "README.md").read_text()
    readme = (root / "README.md").read_text().splitlines()
    for name in SHIPPED:
        path = resolve(name)
        if path is None:
            continue
        _, meta = load_model(name)
        row = next(line for line in readme if line.startswith(f"| `{name}` |"))
        for label, s in meta["scores"].items():
            assert f"**{s['psnr']:.2f} / {s['ssim']:.4f}**" in card, f"{name} {label} not in the model card"
            assert f"{s['psnr']:.2f}" in row, f"{name} {label} not in the README's model table"
